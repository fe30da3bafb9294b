package bootstrapper

import (
	"context"
	"errors"
	"strings"
	"testing"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// countingPresigner records every object it is asked to presign.
type countingPresigner struct{ asked []string }

func (c *countingPresigner) PresignGetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.PresignOptions)) (*v4.PresignedHTTPRequest, error) {
	c.asked = append(c.asked, *in.Bucket+"/"+*in.Key)
	return &v4.PresignedHTTPRequest{URL: "https://s3.test/" + *in.Bucket + "/" + *in.Key + "?X-Amz-Signature=x"}, nil
}

var _ PresignAPI = (*countingPresigner)(nil)

// TestPresignRefusesSecrets: whatever the ops config says (these recipes are built in code,
// past the validation that refuses them), the bootstrapper presigns nothing in the stack's
// secrets bucket or outside the recipe's fetch_buckets, and the event fails for good before
// any connection.
func TestPresignRefusesSecrets(t *testing.T) {
	const secrets = "sortie-secrets"
	tests := []struct {
		name  string
		edit  func(r *opsconfig.Recipe, params map[string]string)
		want  string // "" means presigned
		asked string
	}{
		{name: "the recipe's own bucket", asked: "sortie-test-tools/tools/tool.sh"},
		{
			name: "a parameter naming the secrets bucket",
			edit: func(r *opsconfig.Recipe, params map[string]string) {
				r.Steps[0].Fetch.Bucket = "{{bucket}}"
				params["bucket"] = secrets
			},
			want: "fetch from s3://sortie-secrets: the stack's secrets bucket",
		},
		{
			name: "the secrets bucket listed by the recipe",
			edit: func(r *opsconfig.Recipe, _ map[string]string) {
				r.FetchBuckets = append(r.FetchBuckets, secrets)
				r.Steps[0].Fetch.Bucket = secrets
				r.Steps[0].Fetch.Key = "keys/sortie-dev.pem"
			},
			want: "fetch from s3://sortie-secrets: the stack's secrets bucket",
		},
		{
			name: "a bucket the recipe does not list",
			edit: func(r *opsconfig.Recipe, params map[string]string) {
				r.Steps[0].Fetch.Bucket = "{{bucket}}"
				params["bucket"] = "someone-elses"
			},
			want: "fetch from s3://someone-elses: not one of the recipe's fetch_buckets",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := testOps(t)
			r := ops.Recipes["test"]
			r.Steps = append([]opsconfig.Step(nil), r.Steps...)
			f := *r.Steps[0].Fetch
			r.Steps[0].Fetch = &f
			ev := testEvent()
			if tt.edit != nil {
				tt.edit(&r, ev.Params)
			}
			ops.Recipes["test"] = r
			p, err := planFleet(ev, ops)
			if err != nil {
				t.Fatal(err)
			}
			presigner := &countingPresigner{}
			st := &stage{deps: service.Deps{Ops: ops}, presign: presigner, secretsBucket: secrets}
			_, _, err = st.renderer(p)(t.Context())
			if tt.want == "" {
				if err != nil || strings.Join(presigner.asked, " ") != tt.asked {
					t.Fatalf("render: %v, presigned %v; want %s", err, presigner.asked, tt.asked)
				}
				return
			}
			if !errors.Is(err, recipe.ErrForbidden) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render error = %v, want ErrForbidden with %q", err, tt.want)
			}
			if len(presigner.asked) > 0 {
				t.Errorf("presigned %v, want nothing", presigner.asked)
			}
			// Through the handler's path: a permanent error, before any connection.
			st.runner = nil // a connection attempt would panic
			if _, err := st.bootstrapFleet(t.Context(), ev); !bus.IsPermanent(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("bootstrapFleet = %v, want a permanent error with %q", err, tt.want)
			}
			if len(presigner.asked) > 0 {
				t.Errorf("presigned %v, want nothing", presigner.asked)
			}
		})
	}
}
