"""The native Gemini API (issue 21 item 3) with the unmodified google-genai SDK, pointed at the stack by its
base URL only, with the SDK's default API version (v1) and with v1beta: generate_content, the stream,
count_tokens, a function-calling turn with thought signatures, the allowlist, auth and Google's error shape.
Every request is billed once from usageMetadata, its usage row names the API, and the audit is clean."""

from __future__ import annotations

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

from tests.conftest import wait_settled

VERSIONS = pytest.mark.parametrize("version", [None, "v1beta"], ids=["default", "v1beta"])
WEATHER = types.FunctionDeclaration(name="get_weather", description="Current weather", parameters_json_schema={
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def sdk(stack, key: str, version: str | None) -> genai.Client:
    options = types.HttpOptions(base_url=stack.base_url + "/api", **({"api_version": version} if version else {}))
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture
def http(stack, funded) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {funded[1]}"}, timeout=30)


@VERSIONS
def test_generate_content_billed_from_usage_metadata(stack, funded, http, version):
    client = sdk(stack, funded[1], version)
    r = client.models.generate_content(model="gemini", contents="hi [[sim output_tokens=9 thinking_tokens=4]]")
    assert r.text and r.usage_metadata.candidates_token_count == 9 and r.usage_metadata.thoughts_token_count == 4
    rows = wait_settled_sync(http, funded[1], 1)
    assert len(rows) == 1 and rows[0]["api"] == "gemini" and rows[0]["status"] == "succeeded"
    assert rows[0]["completion_tokens"] == 13 and rows[0]["prompt_tokens"] == r.usage_metadata.prompt_token_count
    assert rows[0]["charged_micro"] > 0


def wait_settled_sync(http: httpx.Client, key: str, count: int) -> list:
    import asyncio

    return asyncio.run(wait_settled(http, key, count))


@VERSIONS
def test_stream_relays_geminis_own_events(stack, funded, version):
    client = sdk(stack, funded[1], version)
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = list(client.models.generate_content_stream(
        model="gemini", contents="hi [[sim thinking_tokens=12 output_tokens=20]]", config=config))
    thoughts = [p for c in chunks for p in c.candidates[0].content.parts or [] if p.thought]
    assert thoughts and len(chunks) >= 5
    assert chunks[-1].usage_metadata.candidates_token_count == 20
    assert chunks[-1].usage_metadata.thoughts_token_count == 12
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert any(p.thought_signature for c in chunks for p in c.candidates[0].content.parts or [])  # parts as sent


@VERSIONS
def test_count_tokens_is_free(stack, funded, http, version):
    client = sdk(stack, funded[1], version)
    before = http.get("/billing/credits").json()["balance_micro"]
    n = client.models.count_tokens(model="gemini", contents="count these words, please")
    assert n.total_tokens == 7  # the simulator's exact count: ceil(25 / 4)
    rows = wait_settled_sync(http, funded[1], 1)
    assert rows[0]["api"] == "gemini" and rows[0]["finish_reason"] == "count_tokens" and rows[0]["charged_micro"] == 0
    assert http.get("/billing/credits").json()["balance_micro"] == before


def test_count_tokens_counts_against_requests_per_minute(stack, admin):
    _, key = admin.account_with_key(10, rpm=1)
    client = sdk(stack, key, "v1beta")
    client.models.count_tokens(model="gemini", contents="x")
    with pytest.raises(errors.ClientError) as info:
        client.models.count_tokens(model="gemini", contents="x")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    assert any("RetryInfo" in d.get("@type", "") for d in info.value.details["error"]["details"])


@VERSIONS
def test_function_calling_turn_with_thought_signatures(stack, funded, version):
    client = sdk(stack, funded[1], version)
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    ask = types.Content(role="user", parts=[types.Part(text="weather in Oslo and Rome? [[sim tool_calls=2]]")])
    first = client.models.generate_content(model="gemini", contents=[ask], config=config)
    calls = first.candidates[0].content.parts
    assert [p.function_call.name for p in calls] == ["get_weather", "get_weather"]
    assert calls[0].thought_signature  # Gemini 3's, relayed as is
    answers = types.Content(role="user", parts=[
        types.Part.from_function_response(name=p.function_call.name, response={"temp": 21}) for p in calls])
    second = client.models.generate_content(model="gemini", contents=[ask, first.candidates[0].content, answers],
                                            config=config)
    assert second.text and not second.function_calls
    forced = types.GenerateContentConfig(tools=config.tools, tool_config=types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)))
    again = client.models.generate_content(model="gemini", contents=[ask, first.candidates[0].content, answers],
                                           config=forced)
    assert again.function_calls  # mode ANY calls again after a function response
    unsigned = first.candidates[0].content.model_copy(deep=True)
    unsigned.parts[0].thought_signature = b"tampered"
    with pytest.raises(errors.ClientError) as info:  # the upstream's 400 passes through in Google's shape
        client.models.generate_content(model="gemini", contents=[ask, unsigned, answers], config=config)
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("body,field", [
    ({"tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
    ({"tools": [{"code_execution": {}}]}, "tools[0].codeExecution"),
    ({"cachedContent": "cachedContents/abc"}, "cachedContent"),
    ({"serviceTier": "priority"}, "serviceTier"),
    ({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "files/x", "mimeType": "text/plain"}}]}]},
     "contents[0].parts[0].fileData"),
    ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
    ({"generationConfig": {"maxOutputTokens": 10**9}}, "generationConfig.maxOutputTokens"),
    ({"generationConfig": {"speechConfig": {}}}, "generationConfig.speechConfig"),
    ({"somethingNew": 1}, "somethingNew"),
])
def test_the_allowlist_names_the_field(stack, funded, http, body, field):
    request = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **body}
    r = http.post("/api/v1beta/models/gemini:generateContent", json=request)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400 and field in error["message"]
    assert error["details"][0]["fieldViolations"][0]["field"] == field
    assert http.get("/billing/usage").json()["data"] == []  # refused before any hold


def test_snake_case_fields_and_json_array_stream(stack, funded, http):
    request = {"contents": [{"role": "user", "parts": [{"text": "hi [[sim output_tokens=20]]"}]}],
               "generation_config": {"max_output_tokens": 100, "thinking_config": {"include_thoughts": False}}}
    r = http.post("/api/v1/models/gemini:streamGenerateContent", json=request)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    events = orjson.loads(r.content)
    assert isinstance(events, list) and events[-1]["usageMetadata"]["candidatesTokenCount"] == 20


def test_keys_by_header_query_or_bearer_and_errors_in_googles_shape(stack, funded):
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    url = "/api/v1beta/models/gemini:generateContent"
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        assert http.post(url, json=body, headers={"x-goog-api-key": funded[1]}).status_code == 200
        assert http.post(url, json=body, params={"key": funded[1]}).status_code == 200
        assert http.post(url, json=body, headers={"Authorization": f"Bearer {funded[1]}"}).status_code == 200
        r = http.post(url, json=body, headers={"x-goog-api-key": "aio_wrong"})
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = http.post("/api/v1beta/models/nope:generateContent", json=body, headers={"x-goog-api-key": funded[1]})
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
        r = http.post(url, json={"contents": [{"parts": [{"text": "x [[sim error=400]]"}]}]},
                      headers={"x-goog-api-key": funded[1]})
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


@VERSIONS
def test_models_list_and_get_in_geminis_shape(stack, funded, version):
    """google-genai's list and get, on v1beta and on v1 (where OpenAI's list lives at the same path)."""
    client = sdk(stack, funded[1], version)
    models = list(client.models.list())
    assert [m.name for m in models] == ["models/gemini"]
    model = client.models.get(model="gemini")
    assert model.name == "models/gemini" and model.display_name and model.input_token_limit > 0
    assert model.output_token_limit > 0 and "generateContent" in model.supported_actions
    assert client.models.get(model="models/gemini").name == "models/gemini"
    with pytest.raises(errors.ClientError) as info:
        client.models.get(model="nope")
    assert info.value.code == 404 and info.value.status == "NOT_FOUND"


def test_v1_models_are_openais_unless_a_gemini_client_asks(stack, funded):
    """The rule (gateway/gemini_api/models.py): x-goog-api-key / x-goog-api-client, or key / pageSize /
    pageToken, get Gemini's shape; anything else OpenAI's (the openai SDK is unchanged)."""
    from openai import OpenAI

    openai = OpenAI(base_url=stack.base_url + "/api/v1", api_key=funded[1])
    assert [m.id for m in openai.models.list()][:1] and openai.models.retrieve("gemini").id == "gemini"
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        bearer = {"Authorization": f"Bearer {funded[1]}"}
        for how in ({"headers": {"x-goog-api-key": funded[1]}}, {"params": {"key": funded[1]}},
                    {"headers": bearer, "params": {"pageSize": 1}}):
            r = http.get("/api/v1/models", **how)
            assert r.status_code == 200 and r.json()["models"][0]["name"] == "models/gemini", how
        r = http.get("/api/v1/models/gemini", headers={"x-goog-api-key": funded[1]})
        assert r.json()["supportedGenerationMethods"] == ["generateContent", "streamGenerateContent", "countTokens"]
        r = http.get("/api/v1/models", headers={"x-goog-api-key": "aio_wrong"})
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = http.get("/api/v1beta/models", headers=bearer, params={"pageToken": "x"})
        assert r.status_code == 400 and r.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "pageToken"


def test_model_pages():
    from gateway.gemini_api.models import page

    entries = [{"name": f"models/m{i}"} for i in range(5)]
    first = page(entries, 2, None)
    assert [e["name"] for e in first["models"]] == ["models/m0", "models/m1"] and first["nextPageToken"] == "2"
    last = page(entries, 2, "4")
    assert [e["name"] for e in last["models"]] == ["models/m4"] and "nextPageToken" not in last
    assert page(entries, None, None) == {"models": entries}


def test_unknown_model_through_the_sdk(stack, funded):
    client = sdk(stack, funded[1], None)
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model="nope", contents="x")
    assert info.value.code == 404 and info.value.status == "NOT_FOUND"


def test_native_output_is_clamped_to_the_hold():
    """The worker clamps a native request's maxOutputTokens (and lowers its thinking) to what the hold pays."""
    from shared.catalog import get_catalog
    from shared.pricing import PPM, affordable_output_tokens, worst_case_micro
    from worker.hold_clamp import clamp_native

    model = get_catalog().models["gemini"]
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {
        "temperature": 0.5, "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "HIGH"}}}
    job = {"hold_micro": model.base_cost_micro, "prompt_bound_tokens": 10, "body": body}
    clamped = clamp_native(job, model)
    allowed = affordable_output_tokens(model.prices, PPM, model.base_cost_micro, 10, model.max_output_tokens)
    config = clamped["generationConfig"]
    assert config["maxOutputTokens"] == allowed and config["temperature"] == 0.5
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingLevel": "LOW"}  # allowed >= 4096
    low = clamp_native({**job, "hold_micro": worst_case_micro(model.prices, PPM, 10, 100)}, model)["generationConfig"]
    assert low["maxOutputTokens"] == 100 and low["thinkingConfig"]["thinkingLevel"] == "MINIMAL"
    asked_less = {**body, "generationConfig": {"thinkingConfig": {"thinkingLevel": "MINIMAL"}}}
    assert clamp_native({**job, "body": asked_less}, model)["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "MINIMAL"}  # never raised
    rich = {**job, "hold_micro": worst_case_micro(model.prices, PPM, 10, model.max_output_tokens)}
    assert clamp_native(rich, model) is body  # the hold covers the worst case: sent as is


def test_a_nearly_empty_account_gets_a_clamped_answer_never_an_overdraw(stack, admin):
    account, key = admin.account_with_key(5.2)
    client = sdk(stack, key, "v1beta")
    r = client.models.generate_content(model="gemini", contents="long [[sim thinking_tokens=0 output_tokens=30000]]")
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert r.usage_metadata.candidates_token_count < 30000
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        rows = wait_settled_sync(http, key, 1)
        assert rows[0]["charged_micro"] <= rows[0]["hold_micro"] <= 5_200_000
    assert admin.get_account(account["id"])["balance_micro"] >= 0


def test_a_stream_broken_midway_ends_with_googles_error_and_is_refunded(stack, funded, http):
    client = sdk(stack, funded[1], "v1beta")
    with pytest.raises(errors.APIError):
        for _ in client.models.generate_content_stream(model="gemini", contents="x [[sim output_tokens=60 fail_after=2]]"):
            pass
    rows = wait_settled_sync(http, funded[1], 1)
    assert rows[0]["status"] == "failed" and rows[0]["charged_micro"] == 0 and rows[0]["api"] == "gemini"
