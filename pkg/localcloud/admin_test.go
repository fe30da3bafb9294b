package localcloud

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// The admin endpoint answers only loopback clients that send its header, and says what is
// wrong with a request.
func TestAdminEndpointRefuses(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	form := url.Values{"instance": {"i-0123456789abcdef0"}, "notice": {"1s"}}.Encode()
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		remote string
		header bool
		status int
		want   string
	}{
		{"not loopback", http.MethodPost, "interrupt-spot", form, "192.0.2.1:4000", true, http.StatusForbidden, "loopback"},
		{"without the header", http.MethodPost, "interrupt-spot", form, "127.0.0.1:4000", false, http.StatusForbidden, AdminHeader},
		{"GET", http.MethodGet, "interrupt-spot", "", "127.0.0.1:4000", true, http.StatusMethodNotAllowed, "POST"},
		{"unknown action", http.MethodPost, "reboot", form, "[::1]:4000", true, http.StatusNotFound, "no admin action"},
		{"bad id", http.MethodPost, "lose-instance", "instance=nope", "127.0.0.1:4000", true, http.StatusBadRequest, "want an instance id"},
		{"bad notice", http.MethodPost, "interrupt-spot", "instance=i-0123456789abcdef0&notice=soon", "127.0.0.1:4000", true, http.StatusBadRequest, "want a duration"},
		{"unknown instance", http.MethodPost, "interrupt-spot", form, "127.0.0.1:4000", true, http.StatusNotFound, "no such instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, AdminPath+tt.path, strings.NewReader(tt.body))
			r.RemoteAddr = tt.remote
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.header {
				r.Header.Set(AdminHeader, "1")
			}
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != tt.status || !strings.Contains(w.Body.String(), tt.want) {
				t.Errorf("%d %s, want %d and %q", w.Code, w.Body, tt.status, tt.want)
			}
		})
	}
}
