package service

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	mux := http.NewServeMux()
	status := http.StatusOK
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))

	// A port nothing listens on: a listener opened and closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	for _, c := range []struct {
		name, addr string
		status     int
		want       string // "" for healthy
	}{
		{"healthy, any interface", ":" + port, http.StatusOK, ""},
		{"healthy, explicit host", "127.0.0.1:" + port, http.StatusOK, ""},
		{"unhealthy", ":" + port, http.StatusServiceUnavailable, "503"},
		{"nothing listening", closed, http.StatusOK, "connect"},
		{"server off", "", http.StatusOK, "off"},
		{"bad address", "8080", http.StatusOK, "SORTIE_HTTP_ADDR"},
	} {
		t.Run(c.name, func(t *testing.T) {
			status = c.status
			err := Healthcheck(context.Background(), c.addr)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("Healthcheck(%q) = %v, want %q", c.addr, err, c.want)
			}
		})
	}
}
