"""runtail's streaming side: ``tailer serve DIR`` pushes new log lines to WebSocket clients."""
