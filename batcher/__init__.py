"""Pure windowing and per-key reduction of change events. No I/O lives here."""
