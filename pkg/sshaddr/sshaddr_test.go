package sshaddr

import (
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

func TestOf(t *testing.T) {
	tagged := ec2types.Instance{
		InstanceId:       aws.String("i-1"),
		PrivateIpAddress: aws.String("10.0.0.7"),
		PublicIpAddress:  aws.String("203.0.113.9"),
		Tags:             []ec2types.Tag{{Key: aws.String(tags.SSHEndpoint), Value: aws.String("127.0.0.1:40001")}},
	}
	bare := ec2types.Instance{InstanceId: aws.String("i-2")}
	for _, tt := range []struct {
		name string
		mode Mode
		in   ec2types.Instance
		want string
		err  error
	}{
		{"AWS: the tag is ignored, private IP", Mode{}, tagged, "10.0.0.7:22", nil},
		{"AWS: public IP when the template says so", Mode{PublicIP: true}, tagged, "203.0.113.9:22", nil},
		{"local mode: the tag", Mode{Local: true}, tagged, "127.0.0.1:40001", nil},
		{"local mode without the tag: private IP", Mode{Local: true}, ec2types.Instance{PrivateIpAddress: aws.String("10.0.0.8")}, "10.0.0.8:22", nil},
		{"no address", Mode{}, bare, "", ErrNoAddress},
		{"no public address", Mode{PublicIP: true}, ec2types.Instance{PrivateIpAddress: aws.String("10.0.0.8")}, "", ErrNoAddress},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.mode.Of(tt.in)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Errorf("Of = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}
