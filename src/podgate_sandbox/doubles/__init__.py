"""The cloud API doubles: each speaks a cloud's real wire protocol to its real SDK, on loopback."""
