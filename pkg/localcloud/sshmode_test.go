package localcloud

import (
	"strings"
	"testing"
)

// TestSSHServerOption: an unknown SSH server is refused at once, naming the choices.
func TestSSHServerOption(t *testing.T) {
	tests := []struct {
		ssh     string
		wantErr string
	}{
		{ssh: "dropbear", wantErr: `ssh server "dropbear": want embedded or openssh`},
		{ssh: "OpenSSH", wantErr: `ssh server "OpenSSH"`},
	}
	for _, tt := range tests {
		t.Run(tt.ssh, func(t *testing.T) {
			c, err := New(Options{Addr: "127.0.0.1:0", SSH: tt.ssh})
			if err == nil {
				c.Close()
				t.Fatalf("New accepted SSH %q", tt.ssh)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q lacks %q", err, tt.wantErr)
			}
		})
	}
}
