package provisioner

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// TestEC2ClientFallsBackAtOnce checks the client's retry policy: EC2 reports missing
// capacity as a server error, which the SDK would retry on the same type and subnet; the
// provisioner's client returns it at once (to fall back), and still retries throttling.
func TestEC2ClientFallsBackAtOnce(t *testing.T) {
	tests := []struct {
		code     string
		status   int
		wantReqs int64
	}{
		{"InsufficientInstanceCapacity", http.StatusInternalServerError, 1},
		{"InstanceLimitExceeded", http.StatusBadRequest, 1},
		{"RequestLimitExceeded", http.StatusServiceUnavailable, 3},
		{"InternalError", http.StatusInternalServerError, 3},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			var reqs atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				reqs.Add(1)
				w.Header().Set("Content-Type", "text/xml")
				w.WriteHeader(tt.status)
				fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>test</Message></Error></Errors><RequestID>r-1</RequestID></Response>`, tt.code)
			}))
			defer srv.Close()
			cfg := awsx.ForEndpoint(srv.URL)
			client := NewEC2Client(cfg)
			_, err := client.RunInstances(t.Context(), &ec2.RunInstancesInput{
				ImageId: aws.String("ami-0123456789abcdef0"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			}, func(o *ec2.Options) {
				o.Retryer = retry.AddWithMaxBackoffDelay(o.Retryer, 1) // keep the retries fast
			})
			if awsx.ErrorCode(err) != tt.code {
				t.Fatalf("error %v, want code %s", err, tt.code)
			}
			if got := reqs.Load(); got != tt.wantReqs {
				t.Errorf("%d requests, want %d", got, tt.wantReqs)
			}
		})
	}
}
