"""Real clients, unchanged, against the running stack: openai-node (npm ``openai``, on
Node >= 22) for streamed tool calls, and LangChain's ``ChatOpenAI`` with ``bind_tools``
and ``with_structured_output``.

openai-node lives in ``var/node-clients`` (git-ignored). If it is missing, the fixture
installs it with npm (``node@22`` from npm's ``node`` package when the system node is
older, plus ``openai@6``); without npm or network the tests skip and say why.
LangChain needs ``langchain-openai`` in the venv (a dev dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "var" / "node-clients"
NODE_MIN = 22

NODE_SCRIPT = r"""
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const tools = [
  { type: "function", function: { name: "get_weather", description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time", description: "Local time",
    parameters: { type: "object", properties: { tz: { type: "string" } }, required: ["tz"] } } },
];

async function manualLoop() {
  // The loop from openai-node's README: accumulate streamed tool call deltas by index.
  const messages = [{ role: "user", content: "weather and time? [[sim tool_calls=2]]" }];
  const out = { rounds: [] };
  for (let round = 0; round < 3; round++) {
    const stream = await client.chat.completions.create({ model: "gemini", messages, tools, stream: true,
                                                          stream_options: { include_usage: true } });
    const calls = []; let content = ""; let reasoning = ""; let finish = null; let heads = 0;
    for await (const chunk of stream) {
      if (!chunk.choices.length) { out.usage = chunk.usage; continue; }
      const delta = chunk.choices[0].delta;
      content += delta.content || "";
      reasoning += delta.reasoning_content || "";
      for (const tc of delta.tool_calls || []) {
        if (tc.id) { heads++; calls[tc.index] = { id: tc.id, type: "function", function: { name: tc.function.name, arguments: "" } }; }
        if (tc.function && tc.function.arguments) calls[tc.index].function.arguments += tc.function.arguments;
      }
      finish = chunk.choices[0].finish_reason || finish;
    }
    out.rounds.push({ finish, calls: calls.map((c) => c.function.name), heads, content: content.length > 0 });
    if (!calls.length) break;
    messages.push({ role: "assistant", content: content || null, reasoning_content: reasoning, tool_calls: calls });
    for (const c of calls) {
      const args = JSON.parse(c.function.arguments);
      messages.push({ role: "tool", tool_call_id: c.id, content: JSON.stringify({ ok: true, args }) });
    }
  }
  return out;
}

async function runner() {
  // openai-node's own tool runner, streaming.
  const calls = [];
  const fn = (name) => ({ type: "function", function: { name, description: name, parse: JSON.parse,
    parameters: tools.find((t) => t.function.name === name).function.parameters,
    function: async (args) => { calls.push(name); return { ok: true, args }; } } });
  const run = client.chat.completions.runTools({ model: "gemini", stream: true, tools: [fn("get_weather"), fn("get_time")],
    messages: [{ role: "user", content: "weather and time? [[sim tool_calls=3]]" }] });
  const final = await run.finalContent();
  return { calls, final: typeof final === "string" && final.length > 0 };
}

(async () => {
  const result = { node: process.version, manual: await manualLoop(), runner: await runner() };
  console.log(JSON.stringify(result));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _node_version(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def _find_node() -> str | None:
    local = NODE_DIR / "node_modules" / ".bin" / "node"
    for node in (shutil.which("node"), str(local)):
        if node and Path(node).exists() and _node_version(node) >= NODE_MIN:
            return node
    return None


def _install() -> str:
    """npm install openai (and node@22 when needed) into var/node-clients; returns what went wrong."""
    npm = shutil.which("npm")
    if not npm:
        return "npm is not installed"
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not (NODE_DIR / "package.json").exists():
        (NODE_DIR / "package.json").write_text('{"name": "node-clients", "private": true}\n')
    wanted = ["openai@6"] + ([] if _find_node() else [f"node@{NODE_MIN}"])
    run = subprocess.run([npm, "install", "--no-audit", "--no-fund", *wanted], cwd=NODE_DIR, capture_output=True,
                         text=True, timeout=300)
    if run.returncode:
        return f"npm install {' '.join(wanted)} failed: {run.stderr.strip()[-400:]}"
    if not _find_node():  # npm >= 11 holds back install scripts (node's binary download) until approved
        subprocess.run([npm, "install-scripts", "approve", "node"], cwd=NODE_DIR, capture_output=True, timeout=60)
        subprocess.run([npm, "rebuild", "node"], cwd=NODE_DIR, capture_output=True, timeout=300)
    return "" if _find_node() else f"no Node >= {NODE_MIN} after installing npm's node package"


@pytest.fixture(scope="module")
def node() -> str:
    node = _find_node()
    if node is None or not (NODE_DIR / "node_modules" / "openai").exists():
        try:
            problem = _install()
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"npm install failed: {exc}"
        if problem:
            pytest.skip(f"openai-node needs Node >= {NODE_MIN} and npm's openai package in {NODE_DIR}: {problem}")
        node = _find_node()
    return node


def test_openai_node_streamed_tool_calls(stack, funded, node):
    script = NODE_DIR / "tool_loop.cjs"
    script.write_text(NODE_SCRIPT)
    run = subprocess.run([node, str(script)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "BASE_URL": stack.base_url + "/api/v1", "API_KEY": funded[1]})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert int(result["node"].lstrip("v").split(".")[0]) >= NODE_MIN
    first, second = result["manual"]["rounds"]
    assert first == {"finish": "tool_calls", "calls": ["get_weather", "get_time"], "heads": 2, "content": False}
    assert second["finish"] == "stop" and second["content"] and not second["calls"]
    assert result["manual"]["usage"]["completion_tokens"] > 0
    assert result["runner"] == {"calls": ["get_weather", "get_time", "get_weather"], "final": True}


# --- LangChain ---------------------------------------------------------------------------------
langchain_openai = pytest.importorskip(
    "langchain_openai", reason="langchain-openai is not installed (add it to the dev dependencies)")


class GetWeather(BaseModel):
    """Get the current weather in a city."""
    city: str = Field(description="City name")
    unit: Literal["C", "F"] = "C"


class Contact(BaseModel):
    """A contact card."""
    name: str
    kind: Literal["friend", "colleague"]
    age: int = Field(ge=0, le=150)
    emails: list[str]


@pytest.fixture
def chat(stack, funded):
    return langchain_openai.ChatOpenAI(model="gemini", base_url=stack.base_url + "/api/v1", api_key=funded[1],
                                       max_retries=0, timeout=30)


def test_langchain_bind_tools_loop(chat):
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = chat.bind_tools([GetWeather])
    messages = [HumanMessage("weather in Oslo and Rome? [[sim tool_calls=2]]")]
    ai = llm.invoke(messages)
    assert [c["name"] for c in ai.tool_calls] == ["GetWeather", "GetWeather"]
    assert all(GetWeather.model_validate(c["args"]) for c in ai.tool_calls)
    messages += [ai, *[ToolMessage(content='{"temp": 20}', tool_call_id=c["id"]) for c in ai.tool_calls]]
    final = llm.invoke(messages)  # the signature travels in the ids LangChain kept
    assert final.content and not final.tool_calls


def test_langchain_bind_tools_streaming(chat):
    llm = chat.bind_tools([GetWeather], tool_choice="GetWeather")
    merged = None
    for chunk in llm.stream("weather? [[sim tool_calls=1]]"):
        merged = chunk if merged is None else merged + chunk
    (call,) = merged.tool_calls
    assert call["name"] == "GetWeather" and GetWeather.model_validate(call["args"])


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(chat, method):
    prompt = "a contact as JSON" if method == "json_mode" else "a contact"
    if method == "json_mode":
        # json_mode has no schema: the model is only told to answer JSON (here: the simulator's own object).
        result = chat.with_structured_output(None, method="json_mode").invoke(prompt)
        assert isinstance(result, dict)
        return
    result = chat.with_structured_output(Contact, method=method).invoke(prompt)
    assert isinstance(result, Contact) and result.kind in ("friend", "colleague")
