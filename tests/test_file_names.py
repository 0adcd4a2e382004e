"""An uploaded file's name cannot inject into Content-Disposition (issue 17 item 2).

The name a client gives (``filename`` or RFC 5987 ``filename*``) is stored
cleaned and comes back on download as RFC 6266 ``filename*=UTF-8''...`` with an
ASCII fallback: no added parameter, no split header, no 500.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import unquote

import httpx
import pytest
from openai import AsyncOpenAI

from shared.filenames import DEFAULT, MAX_BYTES, content_disposition, safe_filename

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


def multipart(disposition_params: str, content: bytes = LINE) -> tuple[bytes, str]:
    """A multipart body written by hand, so the file part's Content-Disposition is exactly what we say."""
    boundary = "b" + secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {disposition_params}\r\n"
            f"Content-Type: application/jsonl\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def upload(http: httpx.Client, key: str, disposition_params: str) -> dict:
    body, content_type = multipart(disposition_params)
    r = http.post("/api/v1/files", content=body, headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": content_type})
    assert r.status_code == 200, r.text
    return r.json()


PARAM = re.compile(r';\s*([^=;\s]+)=("(?:[^"\\]|\\.)*"|[^;"]*)')


def disposition_params(header: str) -> dict[str, str]:
    """Every parameter of the header, by RFC 6266's grammar; the whole header must parse."""
    disposition, _, rest = header.partition(";")
    assert disposition == "attachment", header
    params, end = {}, 0
    rest = ";" + rest
    for m in PARAM.finditer(rest):
        assert m.start() == end and m[1] not in params, header  # nothing between, nothing twice
        value = m[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif m[1].endswith("*"):
            charset, _, encoded = value.partition("''")
            assert charset == "UTF-8", header
            value = unquote(encoded, errors="strict")
        params[m[1]] = value
        end = m.end()
    assert end == len(rest), header
    return params


@pytest.mark.parametrize("params, stored", [
    # the example: a quote and a semicolon would add a second filename parameter
    ("filename*=UTF-8''a%22%3B%20filename%3D%22evil.html", "a__ filename=_evil.html"),
    # CR LF (which used to make the download a 500) and other control characters
    ("filename*=UTF-8''in%0D%0ASet-Cookie%3A%20x%3D1.jsonl", "inSet-Cookie: x=1.jsonl"),
    ("filename*=UTF-8''a%00b%07c%7F.jsonl", "abc.jsonl"),
    # paths, a right-to-left override, nothing at all
    ("filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", ".._.._etc_passwd"),
    ("filename*=UTF-8''%E2%80%AEgnp.exe", "gnp.exe"),
    ("filename*=UTF-8''..", DEFAULT),
    # a name that is fine stays as it was, non-ASCII included
    ("filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.jsonl", "résumé 日本.jsonl"),
])
def test_uploaded_names_are_cleaned_and_downloads_carry_one_safe_filename(stack, funded, params, stored):
    _, key = funded
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        created = upload(http, key, params)
        name = created["filename"]
        assert name == stored
        assert not any(ch in name for ch in '"\\/;\r\n\x00')
        r = http.get(f"/api/v1/files/{created['id']}/content", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.content == LINE
        header = r.headers["content-disposition"]
        assert "\r" not in header and "\n" not in header
        parsed = disposition_params(header)
        assert set(parsed) == {"filename", "filename*"}, header  # no parameter smuggled in
        assert header.startswith('attachment; filename="') and "filename*=UTF-8''" in header
        assert parsed["filename*"] == name  # the exact stored name
        assert parsed["filename"].isascii()


def test_a_long_name_is_cut_to_the_limit(stack, funded):
    _, key = funded
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        created = upload(http, key, "filename*=UTF-8''" + "%C3%A9" * 300)
    assert created["filename"] == "é" * (MAX_BYTES // 2)
    assert len(created["filename"].encode()) <= MAX_BYTES


async def test_the_openai_sdk_uploads_and_downloads_as_before(stack, funded):
    _, key = funded
    client = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=key, max_retries=0)
    f = await client.files.create(file=("batch input.jsonl", LINE), purpose="batch")
    assert f.filename == "batch input.jsonl"
    assert (await client.files.retrieve(f.id)).filename == "batch input.jsonl"
    content = await client.files.content(f.id)
    assert content.content == LINE
    assert disposition_params(content.response.headers["content-disposition"])["filename*"] == "batch input.jsonl"


def test_names_stored_before_cleaning_still_download_safely():
    header = content_disposition('old"; filename="evil.html\r\nX: y')
    assert "\r" not in header and "\n" not in header
    assert set(disposition_params(header)) == {"filename", "filename*"}
    assert safe_filename(None) == DEFAULT and safe_filename("   ") == DEFAULT
