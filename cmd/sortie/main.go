// Command sortie is Sortie's operator CLI: infra up|down, localcloud, and (with the
// services) dev, submit and status.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
)

// CLI is the command tree, parsed by kong.
type CLI struct {
	Prefix string `help:"Name prefix of this Sortie stack's topics, queues and bucket." env:"SORTIE_PREFIX" default:"sortie"`

	Dev        DevCmd        `cmd:"" help:"Run Sortie end to end in one process on the local cloud: the demo job from message to terminated fleet."`
	Infra      InfraCmd      `cmd:"" help:"Create or remove the stack's topics, queues, DLQs, subscriptions and log bucket."`
	Localcloud LocalcloudCmd `cmd:"" help:"Serve the local cloud: Sortie's EC2 endpoint with SSH-reachable instances, and kumo for every other AWS service; interrupt or lose its instances while it runs."`
	Worker     WorkerCmd     `cmd:"" help:"Run the demo workload on an instance (installed there as sortie-worker)."`
	Submit     SubmitCmd     `cmd:"" help:"Submit a job (from a JSON file or flags); --watch follows it until its fleet is terminated."`
	Demo       DemoCmd       `cmd:"" help:"Prepare and submit the demo job against services run separately (task up)."`
	Audit      AuditCmd      `cmd:"" help:"Check that the stack's buckets (log, secrets, any --bucket) enforce TLS only, SSE-KMS and a public access block; exit non-zero if not."`
	Status     StatusCmd     `cmd:"" help:"List the stack's (--prefix) Sortie instances by job (from their tags), flagging expired leases."`
	Logs       LogsCmd       `cmd:"" help:"Print a job's logs from the archives the reaper stored in S3; --follow streams them live from the instances."`
	SSH        SSHCmd        `cmd:"" name:"ssh" help:"Log in to (or run a command on) one of a job's instances with OpenSSH, the pinned host key and the fleet's login key."`
	SSHConfig  SSHConfigCmd  `cmd:"" name:"ssh-config" help:"Print ssh_config Host blocks and known_hosts lines for a job's instances (pinned host keys only)."`
	Profiles   ProfilesCmd   `cmd:"" help:"Show each capacity profile's configured and learned rates (items per instance-minute) and which one the planner sizes with now."`
	Simulate   SimulateCmd   `cmd:"" help:"Replay a synthetic trace of jobs against Sortie's sizing and two baseline autoscaling policies (--trace FILE), or generate one (--generate N --seed S)."`
	Dlq        DlqCmd        `cmd:"" help:"List the stack's dead letters with their reasons, or move them back to their queue."`
	Watch      WatchCmd      `cmd:"" help:"Follow a job, running or finished: its history from the ledger, then its live events with a progress line; exit non-zero unless it succeeded."`
	Hold       HoldCmd       `cmd:"" help:"Keep a job's instances when it ends (for --for), to look at them; status shows it HELD."`
	Release    ReleaseCmd    `cmd:"" help:"End a job's hold: its fleet is reaped."`
	Cancel     CancelCmd     `cmd:"" help:"End a job with outcome cancelled: not launched if it was not yet, else logs archived and instances terminated."`
}

// Globals are handed to every command's Run.
type Globals struct {
	Stdout io.Writer
	Stderr io.Writer
	Prefix string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cliArgs(os.Args), os.Stdout, os.Stderr)
	stop()
	var exit *exitError
	if errors.As(err, &exit) {
		os.Exit(exit.code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sortie:", err)
		os.Exit(1)
	}
}

// run parses args and runs the chosen command; tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cli CLI
	parser, err := kong.New(&cli,
		kong.Name("sortie"),
		kong.Description("Sortie turns job messages into short-lived EC2 worker fleets."),
		kong.Writers(stdout, stderr),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.UsageOnError(),
		learningDefaults,
	)
	if err != nil {
		return err
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return err
	}
	return explain(kctx.Run(&Globals{Stdout: stdout, Stderr: stderr, Prefix: cli.Prefix}))
}
