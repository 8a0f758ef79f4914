// A stand-in for the unmodified React client (src/services/websocket.ts of the
// xray-vision-ai-forge frontend), as it behaves on the wire: it connects to the
// base URL (never a path, never `since`), sends {"type":"ping"} every 30 s,
// and reconnects 3 s after any close, at most 10 times in a row (the count
// resets when a connection opens). The browser keeps and sends cookies as it
// would for the real app. Used by tests/test_unmodified_client.py and
// benchmarks/bench_unmodified_client.py; not shipped.
class LegacyClient {
  constructor(url) {
    this.url = url;
    this.reconnectAttempts = 0;
    this.messages = []; // every message received, in order
    this.opens = 0;
    this.closes = [];
    this.gaveUp = false;
    this.ws = null;
    this.ping = null;
  }

  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.opens += 1;
      this.reconnectAttempts = 0;
      clearInterval(this.ping);
      this.ping = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, 30000);
    };
    ws.onmessage = (event) => {
      try {
        this.messages.push(JSON.parse(event.data));
      } catch {
        // the original logs and drops it
      }
    };
    ws.onclose = (event) => {
      clearInterval(this.ping);
      this.closes.push(event.code);
      if (this.reconnectAttempts >= 10) {
        this.gaveUp = true;
        return;
      }
      this.reconnectAttempts += 1;
      setTimeout(() => this.connect(), 3000);
    };
  }
}
window.LegacyClient = LegacyClient;
