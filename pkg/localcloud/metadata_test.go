package localcloud

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The local cloud records RunInstances' MetadataOptions and reports them in
// DescribeInstances, with AWS's defaults (IMDSv1 allowed) when the launch names none.
func TestMetadataOptions(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)

	tests := []struct {
		name string
		opts *types.InstanceMetadataOptionsRequest
		want types.InstanceMetadataOptionsResponse
	}{
		{"default", nil, types.InstanceMetadataOptionsResponse{
			HttpTokens: types.HttpTokensStateOptional, HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
		}},
		{"imdsv2", &types.InstanceMetadataOptionsRequest{
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
		}, types.InstanceMetadataOptionsResponse{
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
		}},
		{"hop limit 2, tokens only", &types.InstanceMetadataOptionsRequest{
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(2),
		}, types.InstanceMetadataOptionsResponse{
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(2), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := runInput(launch{})
			in.MetadataOptions = tt.opts
			out, err := client.RunInstances(ctxT(t), in)
			if err != nil {
				t.Fatalf("RunInstances: %v", err)
			}
			id := aws.ToString(out.Instances[0].InstanceId)
			for _, got := range []types.Instance{out.Instances[0], describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})[0]} {
				m := got.MetadataOptions
				if m == nil {
					t.Fatal("no metadataOptions in the instance's description")
				}
				if m.HttpTokens != tt.want.HttpTokens || aws.ToInt32(m.HttpPutResponseHopLimit) != aws.ToInt32(tt.want.HttpPutResponseHopLimit) ||
					m.HttpEndpoint != tt.want.HttpEndpoint || m.State != types.InstanceMetadataOptionsStateApplied {
					t.Errorf("metadata options = tokens %s, hop limit %d, endpoint %s, state %s; want %s, %d, %s, applied",
						m.HttpTokens, aws.ToInt32(m.HttpPutResponseHopLimit), m.HttpEndpoint, m.State,
						tt.want.HttpTokens, aws.ToInt32(tt.want.HttpPutResponseHopLimit), tt.want.HttpEndpoint)
				}
			}
		})
	}

	bad := []struct {
		name string
		opts *types.InstanceMetadataOptionsRequest
	}{
		{"hop limit 0", &types.InstanceMetadataOptionsRequest{HttpPutResponseHopLimit: aws.Int32(0)}},
		{"hop limit 65", &types.InstanceMetadataOptionsRequest{HttpPutResponseHopLimit: aws.Int32(65)}},
		{"tokens maybe", &types.InstanceMetadataOptionsRequest{HttpTokens: "maybe"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			in := runInput(launch{})
			in.MetadataOptions = tt.opts
			_, err := client.RunInstances(ctxT(t), in)
			wantCode(t, err, "InvalidParameterValue")
		})
	}
}
