"""The `trainfarm` command: talk to a farm's REST API, or run a whole farm on this machine."""
