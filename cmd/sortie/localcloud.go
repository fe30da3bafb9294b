package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// LocalcloudCmd is `sortie localcloud`: the local cloud served standalone, like LocalStack
// (`serve`, the default), and told to inject faults while it runs.
type LocalcloudCmd struct {
	Serve     LocalcloudServeCmd     `cmd:"" default:"withargs" help:"Serve the local cloud until interrupted (the default: sortie localcloud --addr ...)."`
	Interrupt LocalcloudInterruptCmd `cmd:"" help:"Interrupt a running spot instance of the local cloud at AWS_ENDPOINT_URL as EC2 does: the Spot Instance Interruption Warning now, termination after --notice."`
	Lose      LocalcloudLoseCmd      `cmd:"" help:"Terminate an instance of the local cloud at AWS_ENDPOINT_URL as if someone else had: a lost instance."`
}

// LocalcloudServeCmd is `sortie localcloud [serve]`.
type LocalcloudServeCmd struct {
	Addr          string        `help:"Listen address." default:"127.0.0.1:4566" env:"SORTIE_LOCALCLOUD_ADDR"`
	BootDelay     time.Duration `help:"How long an instance stays pending before it runs." default:"200ms"`
	ShutdownDelay time.Duration `help:"How long an instance stays shutting-down before it is terminated." default:"100ms"`
	DataDir       string        `help:"Directory holding every instance's home directory (default: a new temporary directory)." type:"path"`
	InstancePath  []string      `help:"Directory prepended to the PATH of every command on the instances, as an AMI would ship tools (e.g. a bin/ holding sortie-worker); repeatable or a colon-separated list." sep:":" placeholder:"DIR" env:"SORTIE_INSTANCE_PATH"`
	SSH           string        `help:"Each instance's SSH server: embedded, or openssh (Debian's sshd, which logs in only the user running the cloud: set the templates' user to it)." enum:"embedded,openssh" default:"embedded" env:"SORTIE_LOCALCLOUD_SSH"`
}

// Run serves until interrupted, then terminates every instance.
func (c *LocalcloudServeCmd) Run(ctx context.Context, g *Globals) error {
	logger := slog.New(slog.NewJSONHandler(g.Stderr, nil))
	env, err := instanceEnv(c.InstancePath)
	if err != nil {
		return err
	}
	cloud, err := localcloud.New(localcloud.Options{
		Addr:          c.Addr,
		BootDelay:     c.BootDelay,
		ShutdownDelay: c.ShutdownDelay,
		DataDir:       c.DataDir,
		InstanceEnv:   env,
		Logger:        logger,
		SSH:           c.SSH,
	})
	if err != nil {
		return fmt.Errorf("starting local cloud: %w", err)
	}
	fmt.Fprintf(g.Stdout, "local cloud serving on %s\n  export AWS_ENDPOINT_URL=%s AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test\n", cloud.URL(), cloud.URL())
	<-ctx.Done()
	fmt.Fprintln(g.Stdout, "local cloud stopping: terminating every instance")
	return cloud.Close()
}

// LocalcloudInterruptCmd is `sortie localcloud interrupt --instance ID [--notice 2m]`.
type LocalcloudInterruptCmd struct {
	Instance string        `required:"" help:"The spot instance to interrupt (i-...)."`
	Notice   time.Duration `default:"2m" help:"Time between the warning and the termination (EC2 gives two minutes)."`
	Endpoint string        `env:"AWS_ENDPOINT_URL" required:"" help:"The local cloud's endpoint."`
}

// Run asks the local cloud to interrupt the instance.
func (c *LocalcloudInterruptCmd) Run(ctx context.Context, g *Globals) error {
	if err := (localcloud.Admin{Endpoint: c.Endpoint}).InterruptSpot(ctx, c.Instance, c.Notice); err != nil {
		return fmt.Errorf("localcloud interrupt: %w", err)
	}
	fmt.Fprintf(g.Stdout, "%s: interruption warning sent; terminated in %s\n", c.Instance, c.Notice)
	return nil
}

// LocalcloudLoseCmd is `sortie localcloud lose --instance ID`.
type LocalcloudLoseCmd struct {
	Instance string `required:"" help:"The instance to lose (i-...)."`
	Endpoint string `env:"AWS_ENDPOINT_URL" required:"" help:"The local cloud's endpoint."`
}

// Run asks the local cloud to terminate the instance.
func (c *LocalcloudLoseCmd) Run(ctx context.Context, g *Globals) error {
	if err := (localcloud.Admin{Endpoint: c.Endpoint}).LoseInstance(ctx, c.Instance); err != nil {
		return fmt.Errorf("localcloud lose: %w", err)
	}
	fmt.Fprintf(g.Stdout, "%s: terminating\n", c.Instance)
	return nil
}
