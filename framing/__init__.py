"""HTTP/1.1 framing checks, pure: request heads (`request`) and backend answer heads
(`response`) by RFC 9110 and RFC 9112's own rules. No sockets, no WSGI, no routing."""
