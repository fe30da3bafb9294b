package localcloud

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/aws-sdk-go-v2/service/sts/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/opensshd"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// defaultRoleName is the role instances launched without an instance profile get
// credentials for (on AWS they would have none; locally every instance can reach the cloud).
const defaultRoleName = "sortie-localcloud-instance"

// boot takes a pending instance to running: it starts the instance's SSH host while the
// boot delay runs, then publishes the endpoint. A host that cannot start terminates the
// instance with Server.InternalError, as a failed launch does on AWS.
func (c *Cloud) boot(inst *instance) {
	defer c.wg.Done()
	defer close(inst.booted)

	timer := time.NewTimer(max(c.opts.BootDelay, 0))
	defer timer.Stop()

	host, hostKey, err := c.startHost(inst)
	if err == nil {
		select {
		case <-timer.C:
		case <-inst.stop:
		}
	}

	c.mu.Lock()
	if inst.state != statePending { // terminated while booting: the shutdown goroutine waits for us
		c.mu.Unlock()
		if host != nil {
			c.closeHost(inst.id, host)
		}
		return
	}
	if err != nil {
		inst.state = stateTerminated
		inst.stateReason = &xmlStateReason{Code: "Server.InternalError", Message: "Server.InternalError: Internal error on launch"}
		close(inst.stop)
		c.stateNoticeLocked(inst)
		c.mu.Unlock()
		c.log.Error("instance failed to boot", "instance", inst.id, "err", err)
		return
	}
	inst.state = stateRunning
	inst.host = host
	inst.hostKey = hostKey
	inst.tags[tags.SSHEndpoint] = host.Addr()
	c.mu.Unlock()
	c.log.Info("instance running", "instance", inst.id, "ssh", host.Addr())
}

// shutdown finishes a termination: it closes the SSH host (killing its processes) and
// marks the instance terminated (with its state change notice) once the shutdown delay
// has passed.
func (c *Cloud) shutdown(inst *instance, deadline time.Time) {
	defer c.wg.Done()
	<-inst.booted

	c.mu.Lock()
	host := inst.host
	inst.host = nil
	c.mu.Unlock()
	if host != nil {
		c.closeHost(inst.id, host)
	}

	if wait := time.Until(deadline); wait > 0 {
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-c.ctx.Done():
			timer.Stop()
		}
	}
	c.mu.Lock()
	inst.state = stateTerminated
	c.stateNoticeLocked(inst)
	c.mu.Unlock()
	c.log.Info("instance terminated", "instance", inst.id)
}

// sshServer is an instance's SSH server: *sshhost.Host or *opensshd.Server.
type sshServer interface {
	Addr() string
	Close() error
}

var (
	_ sshServer = (*sshhost.Host)(nil)
	_ sshServer = (*opensshd.Server)(nil)
)

func (c *Cloud) closeHost(id string, h sshServer) {
	if err := h.Close(); err != nil {
		c.log.Warn("closing ssh host", "instance", id, "err", err)
	}
}

// startHost starts the instance's SSH host: host key from user data (or a fresh ed25519
// key), the launch key pair as the only authorized key, the instance's directory and an
// environment with the cloud's endpoint and role credentials.
func (c *Cloud) startHost(inst *instance) (sshServer, ssh.PublicKey, error) {
	if c.opts.SSH == SSHOpenSSH {
		return c.startOpenSSH(inst)
	}
	signer, err := hostKeyFromUserData(inst.userData)
	if err != nil {
		return nil, nil, fmt.Errorf("reading host key from user data: %w", err)
	}
	if signer == nil {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generating host key: %w", err)
		}
		if signer, err = ssh.NewSignerFromKey(priv); err != nil {
			return nil, nil, fmt.Errorf("generating host key: %w", err)
		}
	}

	creds, err := c.instanceCredentials(inst)
	if err != nil {
		return nil, nil, err
	}

	dir := c.InstanceDir(inst.id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("creating instance dir: %w", err)
	}
	var authorized []ssh.PublicKey
	if inst.authorizedKey != nil {
		authorized = []ssh.PublicKey{inst.authorizedKey}
	}
	host, err := sshhost.Start(sshhost.Config{
		HostKey:        signer,
		AuthorizedKeys: authorized,
		Dir:            dir,
		Env:            c.hostEnv(inst, creds),
		Logger:         c.log.With("instance", inst.id),
		OnExec:         c.onExec(inst.id),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting ssh host: %w", err)
	}
	return host, signer.PublicKey(), nil
}

// hostEnv is the environment of every command on an instance: the cloud's extra
// variables, then its endpoint, role credentials and the instance's id.
func (c *Cloud) hostEnv(inst *instance, creds *types.Credentials) []string {
	return append(slices.Clone(c.opts.InstanceEnv),
		"AWS_ENDPOINT_URL="+c.url,
		"AWS_REGION=us-east-1",
		"AWS_DEFAULT_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID="+aws.ToString(creds.AccessKeyId),
		"AWS_SECRET_ACCESS_KEY="+aws.ToString(creds.SecretAccessKey),
		"AWS_SESSION_TOKEN="+aws.ToString(creds.SessionToken),
		"SORTIE_INSTANCE_ID="+inst.id,
	)
}

// startOpenSSH starts the instance as Debian's sshd: the same host key (from user data, or
// a fresh ed25519 key), login key, directory and environment as the embedded server.
func (c *Cloud) startOpenSSH(inst *instance) (sshServer, ssh.PublicKey, error) {
	keyPEM, err := hostKeyPEMFromUserData(inst.userData)
	if err != nil {
		return nil, nil, fmt.Errorf("reading host key from user data: %w", err)
	}
	if keyPEM == nil {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generating host key: %w", err)
		}
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			return nil, nil, fmt.Errorf("generating host key: %w", err)
		}
		keyPEM = pem.EncodeToMemory(block)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing host key: %w", err)
	}
	if inst.authorizedKey == nil {
		return nil, nil, errors.New("openssh instances need a key pair: sshd accepts no login without one")
	}
	creds, err := c.instanceCredentials(inst)
	if err != nil {
		return nil, nil, err
	}
	dir := c.InstanceDir(inst.id)
	srv, err := opensshd.Start(opensshd.Config{
		HostKeyPEM:     keyPEM,
		AuthorizedKeys: []ssh.PublicKey{inst.authorizedKey},
		Dir:            dir,
		StateDir:       filepath.Join(c.dataDir, ".sshd", inst.id),
		Env:            c.hostEnv(inst, creds),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting sshd: %w", err)
	}
	return srv, signer.PublicKey(), nil
}

// instanceCredentials assumes the instance profile's role against kumo, the way an
// instance profile hands out temporary credentials on AWS.
func (c *Cloud) instanceCredentials(inst *instance) (*types.Credentials, error) {
	role := inst.roleName
	if role == "" {
		role = defaultRoleName
	}
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	out, err := c.sts.AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:aws:iam::" + ownerID + ":role/" + role),
		RoleSessionName: aws.String(inst.id),
		DurationSeconds: aws.Int32(12 * 3600),
	})
	if err != nil {
		return nil, fmt.Errorf("assuming role %s: %w", role, err)
	}
	if out.Credentials == nil {
		return nil, fmt.Errorf("assuming role %s: no credentials returned", role)
	}
	return out.Credentials, nil
}

// onExec adapts Options.OnExec to one instance's SSH host.
func (c *Cloud) onExec(id string) func(string) {
	if c.opts.OnExec == nil {
		return nil
	}
	return func(command string) { c.opts.OnExec(id, command) }
}
