package proxy

import (
	"log/slog"
	"time"

	"github.com/detour-proxy/detour/internal/listen"
)

// forward picks L4 or L7 for a connection that passed the loop guard.
func (s *Server) forward(id string, log *slog.Logger, c *listen.Conn) {
	rec := L4Record{ID: id, Start: time.Now(), Client: c.Client, OrigDst: c.OrigDst, Protocol: "tcp"}
	switch s.opts.Protocol {
	case ProtocolHTTP:
		s.opts.HTTP.ServeConn(c.TCPConn, c.Client, c.OrigDst, nil)
	default:
		s.forwardL4(id, log, c, nil, rec)
	}
}
