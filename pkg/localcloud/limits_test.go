package localcloud

import (
	"net/http"
	"strings"
	"testing"
)

// Oversized input is refused with a clear error, not read into memory or launched.
func TestOversizedInputIsRefused(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)

	t.Run("user data over 16 KB", func(t *testing.T) {
		_, err := client.RunInstances(ctxT(t), runInput(launch{userData: strings.Repeat("x", MaxUserDataBytes+1)}))
		wantCode(t, err, "InvalidParameterValue")
		if !strings.Contains(err.Error(), "User data is limited") {
			t.Errorf("error %v does not say why", err)
		}
		if n := len(describe(t, client, nil)); n != 0 {
			t.Errorf("%d instances launched", n)
		}
	})
	t.Run("user data of exactly 16 KB", func(t *testing.T) {
		run(t, client, launch{userData: strings.Repeat("x", MaxUserDataBytes)})
	})
	t.Run("form body over the limit", func(t *testing.T) {
		body := "Action=DescribeInstances&Version=2016-11-15&Junk=" + strings.Repeat("a", MaxFormBytes)
		resp, err := http.Post(c.URL(), "application/x-www-form-urlencoded", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want 413", resp.StatusCode)
		}
	})
}
