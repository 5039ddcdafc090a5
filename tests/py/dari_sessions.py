"""Drives every session call of the public dari-python client against cdpgate.

usage: python dari_sessions.py BASE_URL API_KEY   (prints one JSON report line)
"""
import json
import sys

from dari import Dari, DariError

base_url, api_key = sys.argv[1], sys.argv[2]
client = Dari(api_key=api_key, base_url=base_url)
report = {}

session = client.create_session(
    screen_config={"width": 1920, "height": 1080},
    ttl=3600,
    metadata={"purpose": "workflow-automation", "user": "john"},
)
sid = session["session_id"]
report["created_status"] = session["status"]
report["screen_config"] = session["screen_config"]

client.update_session(sid, ttl=7200, metadata={"step": 2})
got = client.get_session(sid)["metadata"]
report["live_url"] = got.pop("live_url", None)
got.pop("live_url_read_only", None)
report["got_metadata"] = got
report["listed_total"] = client.list_sessions(status_filter="active", limit=10, offset=0)["total"]

client.terminate_session(sid)
report["after_terminate"] = client.get_session(sid)["status"]
try:
    client.terminate_session(sid)
except DariError as e:
    report["terminate_again_status"] = e.status_code
    report["terminate_again_message"] = str(e)

try:
    client.create_session(ttl=86401)
except DariError as e:
    report["too_long_ttl_message"] = str(e)

try:
    Dari(api_key="not-a-real-key", base_url=base_url).list_sessions()
except DariError as e:
    report["bad_key_message"] = str(e)

client.delete_session(sid)
try:
    client.get_session(sid)
except DariError as e:
    report["after_delete_status"] = e.status_code

print(json.dumps(report))
