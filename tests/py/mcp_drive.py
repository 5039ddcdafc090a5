"""Drives cdpgate's MCP server with the official Python SDK over Streamable HTTP: lists the
tools, logs in on a local site by snapshot references, reads the result, takes a
screenshot, checks what a second key sees, and ends the session.

usage: python mcp_drive.py MCP_URL KEY_A KEY_B SITE_URL   (prints one JSON report line)
"""
import asyncio
import base64
import json
import re
import struct
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

mcp_url, key_a, key_b, site = sys.argv[1:5]


def text_of(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


def ref_of(snapshot, pattern):
    m = re.search(pattern + r'.*?\[ref=(e\d+)\]', snapshot)
    assert m, f"{pattern!r} not in snapshot:\n{snapshot}"
    return m.group(1)


async def as_key(key, work):
    headers = {"Authorization": f"Bearer {key}"}
    async with streamablehttp_client(mcp_url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            return await work(session, init)


async def first(session, init):
    report = {"protocol": init.protocolVersion, "server": init.serverInfo.name}
    tools = (await session.list_tools()).tools
    report["tools"] = sorted(t.name for t in tools)
    report["schemas_are_objects"] = all(t.inputSchema.get("type") == "object" for t in tools)

    created = await session.call_tool(
        "create_session", {"isolation": "context", "screen_config": {"width": 800, "height": 600}}
    )
    assert not created.isError, text_of(created)
    sid = json.loads(text_of(created))["session_id"]
    report["session_id"] = sid

    nav = await session.call_tool("navigate", {"session_id": sid, "url": site + "/login"})
    assert not nav.isError, text_of(nav)
    snap = text_of(await session.call_tool("snapshot", {"session_id": sid}))
    report["login_snapshot"] = snap
    user = ref_of(snap, r'textbox "Username"')
    password = ref_of(snap, r'textbox "Password"')
    button = ref_of(snap, r'button "Log in"')
    for ref, value in ((user, "alice"), (password, "s3cret")):
        typed = await session.call_tool("type", {"session_id": sid, "ref": ref, "text": value})
        assert not typed.isError, text_of(typed)
    # The snapshot after typing shows the name but never the password.
    report["typed_snapshot"] = text_of(await session.call_tool("snapshot", {"session_id": sid}))
    clicked = await session.call_tool("click", {"session_id": sid, "ref": button})
    assert not clicked.isError, text_of(clicked)
    report["markdown"] = text_of(await session.call_tool("markdown", {"session_id": sid}))

    shot = await session.call_tool("screenshot", {"session_id": sid})
    image = [c for c in shot.content if c.type == "image"][0]
    png = base64.b64decode(image.data)
    report["png_magic"] = png[:8] == b"\x89PNG\r\n\x1a\n"
    report["png_size"] = list(struct.unpack(">II", png[16:24]))
    report["png_mime"] = image.mimeType

    listed = json.loads(text_of(await session.call_tool("list_sessions", {})))
    report["a_lists"] = [s["session_id"] for s in listed["sessions"]]
    live = text_of(await session.call_tool("live_view_url", {"session_id": sid}))
    report["live_view"] = live.startswith("http") and f"/live/{sid}?token=" in live
    # The welcome page's select and its download, by reference.
    snap = text_of(await session.call_tool("snapshot", {"session_id": sid}))
    picked = await session.call_tool("select", {"session_id": sid, "ref": ref_of(snap, r'combobox "Size"'), "values": ["Large"]})
    report["selected"] = text_of(picked)
    got = await session.call_tool("click", {"session_id": sid, "ref": ref_of(snap, r'link "Download your invoice"')})
    assert not got.isError, text_of(got)
    listed = None
    for _ in range(100):  # the broker writes the file as Chrome finishes it
        files = json.loads(text_of(await session.call_tool("list_files", {"session_id": sid})))["files"]
        listed = next((f for f in files if f["name"] == "invoice.txt" and f["complete"]), None)
        if listed:
            break
        await asyncio.sleep(0.1)
    fetched = await session.call_tool("get_file", {"session_id": sid, "name": "invoice.txt"})
    resource = fetched.content[0].resource
    report["invoice"] = {"listed": listed, "resource": {"text": getattr(resource, "text", None), "uri": str(resource.uri)}}

    # Hostile or mistaken calls: each a tool error or a protocol error, the session unharmed.
    errors = {}
    for name, args in [
        ("click", {"session_id": sid, "ref": "e999999999"}),
        ("navigate", {"session_id": sid, "url": "file:///etc/passwd"}),
        ("navigate", {"session_id": sid}),
        ("type", {"session_id": sid, "ref": user, "text": 5}),
        ("press", {"session_id": sid, "key": "NoSuchKey"}),
        ("snapshot", {"session_id": sid, "extra": 1}),
        ("snapshot", {"session_id": "00000000-0000-0000-0000-000000000000"}),
        ("get_file", {"session_id": sid, "name": "../../etc/passwd"}),
    ]:
        r = await session.call_tool(name, args)
        errors[f"{name} {json.dumps(args, sort_keys=True)}"] = [r.isError, text_of(r)]
    report["tool_errors"] = errors
    try:
        await session.call_tool("no_such_tool", {})
        report["unknown_tool"] = "accepted"
    except Exception as e:  # the SDK raises McpError for a JSON-RPC error
        report["unknown_tool"] = str(e)
    report["still_there"] = "Welcome" in text_of(await session.call_tool("markdown", {"session_id": sid}))
    return report


async def second(session, init):
    report = {}
    listed = json.loads(text_of(await session.call_tool("list_sessions", {"status": "all"})))
    report["b_lists"] = listed["sessions"]
    sid = sys.argv[5]
    for name in ["end_session", "snapshot", "screenshot", "live_view_url", "list_files"]:
        r = await session.call_tool(name, {"session_id": sid})
        report[f"b_{name}"] = [r.isError, text_of(r)]
    return report


async def end(session, init):
    r = await session.call_tool("end_session", {"session_id": sys.argv[5]})
    after = json.loads(text_of(await session.call_tool("list_sessions", {})))
    return {"ended": [r.isError, text_of(r)], "active_after": len(after["sessions"])}


async def main():
    step = sys.argv[6] if len(sys.argv) > 6 else "first"
    key = {"first": key_a, "second": key_b, "end": key_a}[step]
    work = {"first": first, "second": second, "end": end}[step]
    print(json.dumps(await as_key(key, work)))


asyncio.run(main())
