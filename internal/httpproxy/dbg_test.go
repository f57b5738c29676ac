package httpproxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestDbgGarbage(t *testing.T) {
	var pr http.Protocols
	pr.SetHTTP1(true)
	pr.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: http.NotFoundHandler(), Protocols: &pr}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()
	c, _ := net.Dial("tcp", ln.Addr().String())
	c.SetDeadline(time.Now().Add(3 * time.Second))
	c.Write([]byte("\x01\x02 not http\r\n\r\n"))
	b, err := io.ReadAll(c)
	t.Logf("plain server: %q %v", b, err)
}
