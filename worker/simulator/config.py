"""Validation of `generationConfig`, `tools` and `toolConfig`, with Google's error wording."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import catalog
from .errors import bad_value, invalid
from .proto import as_bool, as_enum, as_float, as_int, as_list, as_str, obj_fields, range_error
from .schema import check_schema, snake

_GEN_FIELDS = frozenset({
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
    "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
    "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
    "mediaResolution",
})
_TOOL_FIELDS = frozenset({"functionDeclarations", "googleSearchRetrieval", "codeExecution",
                          "googleSearch", "computerUse", "urlContext", "fileSearch", "googleMaps",
                          "mcpServers"})
_DECL_FIELDS = frozenset({"name", "description", "parameters", "parametersJsonSchema", "response",
                          "responseJsonSchema", "behavior"})
_MIME_TYPES = ("text/plain", "application/json", "application/xml", "application/yaml",
               "text/x.enum")
_THINKING_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
_TOOL_CONFIG_FIELDS = frozenset({"functionCallingConfig", "retrievalConfig",
                                 "includeServerSideToolInvocations"})
_FC_FIELDS = frozenset({"mode", "allowedFunctionNames", "streamFunctionCallArguments"})
_MODALITIES = ("TEXT", "IMAGE", "AUDIO")
_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")
_MODES = ("AUTO", "ANY", "NONE", "VALIDATED")
_LEVEL_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel"
_MODE_TYPE = ("type.googleapis.com/google.ai.generativelanguage.v1beta."
              "FunctionCallingConfig.Mode")


@dataclass(slots=True)
class GenConfig:
    max_output_tokens: int | None = None
    stop_sequences: list[str] = field(default_factory=list)
    seed: int = 0
    mime: str = "text/plain"
    schema: Any = None
    include_thoughts: bool = False
    thinking_level: str | None = None
    thinking_budget: int | None = None


@dataclass(slots=True)
class ToolSpec:
    functions: list[tuple[str, Any]] = field(default_factory=list)  # (name, schema or None)
    fc_mode: str = "AUTO"
    allowed_names: list[str] = field(default_factory=list)


def parse_generation_config(raw: Any, model: str) -> GenConfig:
    """Validate `generationConfig` for `model`."""
    out = GenConfig()
    path = "generation_config"
    cfg = obj_fields(raw, _GEN_FIELDS, path, "TYPE_MESSAGE")
    if "temperature" in cfg:
        t = as_float(cfg["temperature"], f"{path}.temperature")
        if not 0 <= t <= 2:
            raise range_error("temperature", cfg["temperature"], "0", "2.0001")
    if "topP" in cfg:
        p = as_float(cfg["topP"], f"{path}.top_p")
        if not 0 <= p <= 1:
            raise range_error("topP", cfg["topP"], "0", "1.0001")
    if "topK" in cfg:
        k = as_int(cfg["topK"], f"{path}.top_k")
        if k < 1:
            raise range_error("topK", k, "1", "65")
    for name in ("presencePenalty", "frequencyPenalty"):
        if name in cfg:
            as_float(cfg[name], f"{path}.{snake(name)}")
    if "candidateCount" in cfg:
        n = as_int(cfg["candidateCount"], f"{path}.candidate_count")
        if n > 1:
            raise invalid("Multiple candidates is not enabled for this model")
        if n < 0:
            raise range_error("candidateCount", n, "1", "2")
    if "maxOutputTokens" in cfg:
        n = as_int(cfg["maxOutputTokens"], f"{path}.max_output_tokens")
        if not 1 <= n <= catalog.MAX_OUTPUT_TOKENS:
            raise range_error("maxOutputTokens", n, "1", str(catalog.MAX_OUTPUT_TOKENS + 1))
        out.max_output_tokens = n
    if "stopSequences" in cfg:
        seqs = as_list(cfg["stopSequences"], f"{path}.stop_sequences", "TYPE_STRING")
        if len(seqs) > 5:
            raise invalid(f"* GenerateContentRequest.{path}.stop_sequences: the number of stop "
                          "sequences must not exceed 5.\n")
        out.stop_sequences = [s for i, s in enumerate(seqs)
                              if as_str(s, f"{path}.stop_sequences[{i}]")]
    if "seed" in cfg:
        out.seed = as_int(cfg["seed"], f"{path}.seed")
    for name in ("responseLogprobs", "enableEnhancedCivicAnswers"):
        if name in cfg:
            as_bool(cfg[name], f"{path}.{snake(name)}")
    if "logprobs" in cfg:
        as_int(cfg["logprobs"], f"{path}.logprobs")
    if "responseModalities" in cfg:
        modalities = as_list(cfg["responseModalities"], f"{path}.response_modalities",
                             "TYPE_ENUM")
        for i, m in enumerate(modalities):
            as_enum(m, f"{path}.response_modalities[{i}]", _MODALITIES, "TYPE_ENUM")
    if "responseMimeType" in cfg:
        mime = as_str(cfg["responseMimeType"], f"{path}.response_mime_type")
        if mime not in _MIME_TYPES:
            raise invalid(f"* GenerateContentRequest.{path}.response_mime_type: allowed mimetypes "
                          "are `text/plain`, `application/json`, `application/xml`, "
                          "`application/yaml` and `text/x.enum`.\n")
        out.mime = mime
    json_schema = cfg.get("responseJsonSchema")
    if "responseSchema" in cfg and json_schema is not None:
        raise invalid(f"* GenerateContentRequest.{path}.response_schema: response_schema and "
                      "response_json_schema cannot both be set.\n")
    if "responseSchema" in cfg:
        out.schema = check_schema(cfg["responseSchema"], f"{path}.response_schema")
    elif json_schema is not None:
        if not isinstance(json_schema, (dict, bool)):
            raise bad_value(f"{path}.response_json_schema", "type.googleapis.com/google.protobuf."
                            "Value", json_schema)
        out.schema = json_schema
    if out.schema is not None and out.mime not in ("application/json", "text/x.enum"):
        raise invalid(f"* GenerateContentRequest.{path}.response_mime_type: response_mime_type "
                      "must be `application/json` or `text/x.enum` when a response schema is "
                      "set.\n")
    if "thinkingConfig" in cfg:
        _thinking_config(cfg["thinkingConfig"], f"{path}.thinking_config", model, out)
    return out


def _thinking_config(raw: Any, path: str, model: str, out: GenConfig) -> None:
    tc = obj_fields(raw, _THINKING_FIELDS, path, "TYPE_MESSAGE")
    if "includeThoughts" in tc:
        out.include_thoughts = as_bool(tc["includeThoughts"], f"{path}.include_thoughts")
    level = budget = None
    if "thinkingLevel" in tc:
        level = as_enum(tc["thinkingLevel"], f"{path}.thinking_level",
                        ("THINKING_LEVEL_UNSPECIFIED", *_LEVELS), _LEVEL_TYPE)
        if level == "THINKING_LEVEL_UNSPECIFIED":
            level = None
    if "thinkingBudget" in tc:
        budget = as_int(tc["thinkingBudget"], f"{path}.thinking_budget")
    if level is not None and budget is not None:
        raise invalid("Unable to submit request because thinking_budget and thinking_level are "
                      "not supported together.")
    if level is not None and not catalog.is_gen3(model):
        raise invalid("Thinking level is not supported for this model.")
    if budget is not None:
        if budget == 0 and catalog.is_pro(model):
            raise invalid("Budget 0 is invalid. This model only works in thinking mode.")
        if budget < -1 or budget > catalog.thinking_budget_max(model):
            raise invalid(f"The thinking budget ({budget}) is invalid.")
    out.thinking_level = level
    out.thinking_budget = budget


def parse_tools(raw: Any, tool_config: Any) -> ToolSpec:
    """Validate `tools` and `toolConfig`."""
    out = ToolSpec()
    seen: set[str] = set()
    for i, t in enumerate(as_list(raw, "tools", "TYPE_MESSAGE")):
        tool = obj_fields(t, _TOOL_FIELDS, f"tools[{i}]", "TYPE_MESSAGE")
        decls = tool.get("functionDeclarations") or []
        decls = as_list(decls, f"tools[{i}].function_declarations", "TYPE_MESSAGE")
        for j, d in enumerate(decls):
            path = f"tools[{i}].function_declarations[{j}]"
            decl = obj_fields(d, _DECL_FIELDS, path, "TYPE_MESSAGE")
            name = as_str(decl.get("name", ""), f"{path}.name")
            if not _valid_name(name):
                raise invalid(f"* GenerateContentRequest.{path}.name: Invalid function name. "
                              "Must start with a letter or an underscore. Must be alphameric "
                              "(a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes "
                              "(-), with a maximum length of 64.\n")
            if name in seen:
                raise invalid(f"Duplicate function declaration found: {name}")
            seen.add(name)
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise invalid(f"* GenerateContentRequest.{path}.parameters_json_schema: "
                              "parameters and parameters_json_schema cannot both be set.\n")
            schema: Any = None
            if "parameters" in decl:
                schema = check_schema(decl["parameters"], f"{path}.parameters")
            elif "parametersJsonSchema" in decl:
                schema = decl["parametersJsonSchema"]
                if not isinstance(schema, (dict, bool)):
                    raise bad_value(f"{path}.parameters_json_schema",
                                    "type.googleapis.com/google.protobuf.Value", schema)
            if "response" in decl:
                check_schema(decl["response"], f"{path}.response")
            out.functions.append((name, schema))
    if tool_config is None:
        return out
    tc = obj_fields(tool_config, _TOOL_CONFIG_FIELDS, "tool_config", "TYPE_MESSAGE")
    if "functionCallingConfig" not in tc:
        return out
    path = "tool_config.function_calling_config"
    fcc = obj_fields(tc["functionCallingConfig"], _FC_FIELDS, path, "TYPE_MESSAGE")
    if "mode" in fcc:
        mode = as_enum(fcc["mode"], f"{path}.mode", ("MODE_UNSPECIFIED", *_MODES), _MODE_TYPE)
        out.fc_mode = "AUTO" if mode == "MODE_UNSPECIFIED" else mode
    if fcc.get("allowedFunctionNames"):
        names = as_list(fcc["allowedFunctionNames"], f"{path}.allowed_function_names",
                        "TYPE_STRING")
        if out.fc_mode not in ("ANY", "VALIDATED"):
            raise invalid(f"* GenerateContentRequest.{path}.allowed_function_names: "
                          "allowed_function_names can only be set when mode is ANY or "
                          "VALIDATED.\n")
        for k, n in enumerate(names):
            if as_str(n, f"{path}.allowed_function_names[{k}]") not in seen:
                raise invalid(f"* GenerateContentRequest.{path}.allowed_function_names[{k}]: "
                              f"function \"{n}\" is not declared in tools.\n")
        out.allowed_names = list(names)
    return out


def _valid_name(name: str) -> bool:
    if not name or len(name) > 64 or not (name[0].isalpha() or name[0] == "_"):
        return False
    return all(ch.isascii() and (ch.isalnum() or ch in "_.:-") for ch in name)
