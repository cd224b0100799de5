"""Home Assistant: discovery payloads, when to publish them, and button presses."""
