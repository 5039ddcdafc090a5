"""A webhook receiver that checks every delivery with the reference Standard Webhooks
library: `webhook_receiver.py PORT SECRET OUT`. Each verified delivery is appended to OUT
as one JSON line (its webhook-id and the event); a delivery that does not verify is
answered 400 and written as {"bad": reason}. Runs until killed."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, secret, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
verifier = Webhook(secret)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = verifier.verify(body, headers)
            line = {"webhook_id": headers["webhook-id"], "event": event}
            status = 204
        except (WebhookVerificationError, KeyError, ValueError) as e:
            line = {"bad": str(e)}
            status = 400
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(json.dumps({"listening": port}), flush=True)
server.serve_forever()
