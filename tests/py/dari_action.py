"""Runs one single action through the public dari-python client and prints the answer.

usage: python dari_action.py BASE_URL API_KEY SESSION_ID ACTION [VARIABLES_JSON]
"""
import json
import sys

from dari import Dari

base_url, api_key, session_id, action = sys.argv[1:5]
variables = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
client = Dari(api_key=api_key, base_url=base_url)
answer = client.run_single_action(action=action, session_id=session_id, variables=variables, id="dari-check")
print(json.dumps(answer))
