package localcloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The admin endpoint lets a separately started local cloud (`sortie localcloud`) be told
// to inject a fault: POST AdminPath+"interrupt-spot" (form: instance, notice as a Go
// duration) runs InterruptSpot, POST AdminPath+"lose-instance" (form: instance) runs
// LoseInstance. It answers only clients on a loopback address, and only requests carrying
// AdminHeader (a browser cannot send it cross-origin without asking first), with JSON:
// {"instance": ..., "action": ...} or {"error": ...} (404 unknown instance, 409 not spot or
// not running, 400 bad input, 403 not loopback).
const (
	AdminPath   = "/_sortie/localcloud/"
	AdminHeader = "X-Sortie-Localcloud-Admin"
)

// adminResponse is the admin endpoint's answer.
type adminResponse struct {
	Instance string `json:"instance,omitempty"`
	Action   string `json:"action,omitempty"`
	Notice   string `json:"notice,omitempty"`
	Error    string `json:"error,omitempty"`
}

func (c *Cloud) serveAdmin(w http.ResponseWriter, r *http.Request) {
	answer := func(status int, resp adminResponse) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(resp)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		answer(http.StatusForbidden, adminResponse{Error: "the local cloud's admin endpoint answers loopback clients only"})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		answer(http.StatusMethodNotAllowed, adminResponse{Error: "POST only"})
		return
	}
	if r.Header.Get(AdminHeader) == "" {
		answer(http.StatusForbidden, adminResponse{Error: "missing header " + AdminHeader})
		return
	}
	if err := r.ParseForm(); err != nil {
		answer(http.StatusBadRequest, adminResponse{Error: err.Error()})
		return
	}
	action := strings.TrimPrefix(r.URL.Path, AdminPath)
	id := r.PostForm.Get("instance")
	if !instanceIDPattern.MatchString(id) {
		answer(http.StatusBadRequest, adminResponse{Error: fmt.Sprintf("instance %q: want an instance id (i-...)", id)})
		return
	}
	resp := adminResponse{Instance: id, Action: action}
	switch action {
	case "interrupt-spot":
		notice, perr := time.ParseDuration(r.PostForm.Get("notice"))
		if perr != nil || notice < 0 {
			answer(http.StatusBadRequest, adminResponse{Error: fmt.Sprintf("notice %q: want a duration such as 2m or 30s", r.PostForm.Get("notice"))})
			return
		}
		resp.Notice = notice.String()
		err = c.InterruptSpot(id, notice)
	case "lose-instance":
		err = c.LoseInstance(id)
	default:
		answer(http.StatusNotFound, adminResponse{Error: fmt.Sprintf("no admin action %q: interrupt-spot or lose-instance", action)})
		return
	}
	switch {
	case errors.Is(err, ErrUnknownInstance):
		answer(http.StatusNotFound, adminResponse{Error: err.Error()})
	case err != nil:
		answer(http.StatusConflict, adminResponse{Error: err.Error()})
	default:
		answer(http.StatusOK, resp)
	}
}

// Admin tells a local cloud started elsewhere (`sortie localcloud`) to inject a fault,
// through its admin endpoint.
type Admin struct {
	Endpoint string       // the cloud's URL (AWS_ENDPOINT_URL)
	HTTP     *http.Client // nil: http.DefaultClient
}

// InterruptSpot runs Cloud.InterruptSpot on the cloud at a.Endpoint.
func (a Admin) InterruptSpot(ctx context.Context, id string, notice time.Duration) error {
	return a.post(ctx, "interrupt-spot", url.Values{"instance": {id}, "notice": {notice.String()}})
}

// LoseInstance runs Cloud.LoseInstance on the cloud at a.Endpoint.
func (a Admin) LoseInstance(ctx context.Context, id string) error {
	return a.post(ctx, "lose-instance", url.Values{"instance": {id}})
}

func (a Admin) post(ctx context.Context, action string, form url.Values) error {
	u, err := url.JoinPath(a.Endpoint, AdminPath, action)
	if err != nil {
		return fmt.Errorf("local cloud endpoint %q: %w", a.Endpoint, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("local cloud endpoint %q: %w", a.Endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(AdminHeader, "1")
	client := a.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", action, err)
	}
	var out adminResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("%s: %s answered %s, not the local cloud's admin endpoint: %.200s", action, a.Endpoint, resp.Status, body)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", action, out.Error)
	}
	return nil
}
