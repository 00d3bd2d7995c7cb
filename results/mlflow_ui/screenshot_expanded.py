"""Screenshot of an MLflow UI page after expanding the first parent run in the runs table: headless
Chromium driven over its DevTools protocol (needs websocket-client).

    python screenshot_expanded.py URL OUT.png
"""

import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

PORT = 9333
EXPAND = """(() => {
  const expander = document.querySelector('.ag-row button[data-component-id$="runnamecellrenderer.tsx_46"]');
  expander.click();
  return 'expanded';
})()"""
ROWS = "document.querySelectorAll('.ag-center-cols-container .ag-row').length"


def main(url: str, out: str) -> None:
    chrome = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1600,1000", f"--remote-debugging-port={PORT}",
         "--remote-debugging-address=127.0.0.1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
                break
            except OSError:
                time.sleep(0.3)
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120)
        calls = iter(range(1, 10**6))

        def call(method, **params):
            call_id = next(calls)
            ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == call_id:
                    return message.get("result", message)

        call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
        call("Page.navigate", url=url)
        time.sleep(25)  # the UI's JS loads and queries the runs
        print(call("Runtime.evaluate", expression=EXPAND, returnByValue=True)["result"]["value"])
        time.sleep(8)
        print("table rows:", call("Runtime.evaluate", expression=ROWS, returnByValue=True)["result"]["value"])
        with open(out, "wb") as f:
            f.write(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
    finally:
        chrome.terminate()
        chrome.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
