// Package sshaddr says where Sortie connects to an instance over SSH. The address always comes
// from EC2's own description of the instance, never from an event: the private IP (or the
// public IP where the template asks for it), port 22. The local cloud's sortie:ssh-endpoint
// tag (a loopback port) is honoured only in local mode, which `sortie dev`, `task up` and the
// tests switch on explicitly (SORTIE_LOCAL_MODE=1); against AWS anyone who can tag an instance
// could otherwise redirect Sortie's SSH connections.
package sshaddr

import (
	"errors"
	"fmt"
	"net"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Mode chooses which of EC2's addresses is used.
type Mode struct {
	// Local honours the local cloud's sortie:ssh-endpoint tag (SORTIE_LOCAL_MODE=1).
	Local bool
	// PublicIP uses the instance's public IP instead of its private IP (a template setting).
	PublicIP bool
}

// ErrNoAddress says EC2 describes the instance without the address the mode needs.
var ErrNoAddress = errors.New("instance has no address to connect to")

// Of returns host:port of the instance as EC2 describes it.
func (m Mode) Of(in ec2types.Instance) (string, error) {
	id := aws.ToString(in.InstanceId)
	if m.Local {
		for _, t := range in.Tags {
			if aws.ToString(t.Key) == tags.SSHEndpoint && aws.ToString(t.Value) != "" {
				return aws.ToString(t.Value), nil
			}
		}
	}
	ip, which := aws.ToString(in.PrivateIpAddress), "private"
	if m.PublicIP {
		ip, which = aws.ToString(in.PublicIpAddress), "public"
	}
	if ip == "" {
		return "", fmt.Errorf("%s: no %s IP: %w", id, which, ErrNoAddress)
	}
	return net.JoinHostPort(ip, "22"), nil
}
