"""The S3 backend of the blob store (``APIINONE_BLOB_STORE=s3``): any S3-compatible server, by aiobotocore.

Settings: ``APIINONE_S3_BUCKET`` (required), ``APIINONE_S3_ENDPOINT`` (unset: AWS itself; set for
MinIO, Ceph, R2...), ``APIINONE_S3_REGION``, ``APIINONE_S3_ACCESS_KEY_ID`` /
``APIINONE_S3_SECRET_ACCESS_KEY`` (unset: botocore's usual chain: ``AWS_*`` variables, instance role),
``APIINONE_S3_PREFIX`` (prepended to every key, to share a bucket).

A ``put`` is one ``PutObject`` for a blob smaller than a part, else a multipart upload of
``PART_BYTES`` parts (S3's smallest), so memory holds one part at a time; a failed or refused
upload is aborted; one a killed process left is aborted by ``clear_abandoned`` (the retention
sweep, after a day; a bucket lifecycle rule that does the same is a fine backstop). Reads are
ranged GETs of ``RANGE_BYTES`` each, from any offset, so memory holds one range.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import AsyncIterator

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.blob_store import BlobMissing, BlobTooLarge, check_key
from shared.settings import Settings

PART_BYTES = 5 * 1024 * 1024
RANGE_BYTES = 1024 * 1024  # bytes per GET when reading
MISSING_CODES = ("NoSuchKey", "404", "NotFound")


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str = "", **client_args) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client_args = client_args
        self._exit = AsyncExitStack()
        self._client = None
        self._opening = asyncio.Lock()

    @classmethod
    def from_settings(cls, s: Settings) -> S3BlobStore:
        if not s.s3_bucket:
            raise ValueError("APIINONE_BLOB_STORE=s3 needs APIINONE_S3_BUCKET")
        args = {"endpoint_url": s.s3_endpoint, "region_name": s.s3_region,
                "config": Config(retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4")}
        if s.s3_access_key_id:
            args |= {"aws_access_key_id": s.s3_access_key_id, "aws_secret_access_key": s.s3_secret_access_key}
        return cls(s.s3_bucket, s.s3_prefix, **args)

    async def client(self):
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._exit.enter_async_context(
                        get_session().create_client("s3", **self.client_args))
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def put(self, key: str, chunks: AsyncIterator[bytes], limit: int | None = None) -> int:
        s3, name = await self.client(), self._key(key)
        part, size, upload_id, parts = bytearray(), 0, None, []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise BlobTooLarge(limit)
                part += chunk
                if len(part) >= PART_BYTES:
                    if upload_id is None:
                        upload_id = (await s3.create_multipart_upload(Bucket=self.bucket, Key=name))["UploadId"]
                    parts.append(await self._upload_part(s3, name, upload_id, len(parts) + 1, part))
                    part = bytearray()
            if upload_id is None:
                await s3.put_object(Bucket=self.bucket, Key=name, Body=bytes(part))
                return size
            if part:
                parts.append(await self._upload_part(s3, name, upload_id, len(parts) + 1, part))
            await s3.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
            return size
        except BaseException:
            if upload_id is not None:
                await asyncio.shield(self._abort(s3, name, upload_id))
            raise

    async def _upload_part(self, s3, name: str, upload_id: str, number: int, body: bytearray) -> dict:
        answer = await s3.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                                      Body=bytes(body))
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, s3, name: str, upload_id: str) -> None:
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except ClientError:
            pass  # the bucket's lifecycle rule ends it

    async def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        """One ranged GET per RANGE_BYTES, each read whole before it is yielded: no connection stays open while
        the reader waits (a batch feeding its lines may pause for minutes between two chunks)."""
        s3 = await self.client()
        total = None
        while total is None or offset < total:
            try:
                answer = await s3.get_object(Bucket=self.bucket, Key=self._key(key),
                                             Range=f"bytes={offset}-{offset + RANGE_BYTES - 1}")
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in MISSING_CODES:
                    raise BlobMissing(key) from None
                if code == "InvalidRange":  # reading from the very end (or an empty blob): nothing left
                    return
                raise
            async with answer["Body"] as body:
                chunk = await body.read()
            total = int(answer["ContentRange"].rpartition("/")[2])
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    async def delete(self, *keys: str) -> None:
        s3 = await self.client()
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    async def keys_under(self, prefix: str) -> list[str]:
        s3 = await self.client()
        found: list[str] = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
            found += [item["Key"][len(self.prefix):] for item in page.get("Contents", [])]
        return sorted(found)

    async def delete_under(self, prefix: str) -> int:
        found = await self.keys_under(prefix)
        await self.delete(*found)
        return len(found)

    async def clear_abandoned(self, older_than_s: float) -> int:
        s3 = await self.client()
        before = time.time() - older_than_s
        cleared = 0
        paginator = s3.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < before:
                    await self._abort(s3, upload["Key"], upload["UploadId"])
                    cleared += 1
        return cleared

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None
