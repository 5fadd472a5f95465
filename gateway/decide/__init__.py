"""Pure decisions: plain functions over values. No I/O, no clock, no event loop."""
