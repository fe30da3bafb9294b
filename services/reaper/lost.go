package reaper

import (
	"context"
	"fmt"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// handleInstanceLost: InstanceLost → archive the lost instance's logs while it still runs.
//
// A spot instance EC2 is reclaiming runs until the warning's NoticeDeadline: its logs are
// archived now, exactly as a finished fleet's are (the same ArchiveKey, SSE-KMS, verified),
// so that the job's FleetTerminated lists the archive ("archived earlier") once the
// instance is gone. The reaper does not terminate it (EC2 does), publishes nothing and
// records nothing terminal: the job goes on with its other instances and their
// replacements.
//
// The instance is first resolved from EC2 (pkg/verify): one that is not this stack's and
// the event's fleet's is refused (logged, acknowledged, nothing archived). One already gone
// has nothing left to archive. An archive that exists (a redelivered InstanceLost) is not
// made again. Errors reading EC2 or S3 are returned for a retry; an archive that fails
// within its time is logged and counted, not retried past the notice.
func (s *stage) handleInstanceLost(ctx context.Context, m *bus.Message) error {
	ev, err := events.DecodeInstanceLost(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered at once; the job goes on
	}
	log := bus.Logger(ctx).With("fleet_id", ev.FleetID, "instance", ev.InstanceID, "cause", ev.Cause, "plan_revision", ev.PlanRevision)
	found, err := verify.Fleet(ctx, s.ec2, verify.Owner{Stack: s.cfg.Prefix, Fleet: ev.FleetID}, []string{ev.InstanceID})
	if err != nil {
		return fmt.Errorf("lost instance %s of fleet %s: %w", ev.InstanceID, ev.FleetID, err)
	}
	in, ok := found.Owned[ev.InstanceID]
	if !ok {
		log.Warn("lost instance refused: not this fleet's in this stack; nothing archived", "reason", found.Refused[ev.InstanceID])
		return nil
	}
	key := ArchiveKey(ev.JobID, ev.InstanceID)
	if arch, err := s.arch.store.Verify(ctx, key, -1); err == nil {
		log.Info("lost instance's logs archived before: not archiving again", "bucket", arch.Bucket, "key", arch.Key, "size_bytes", arch.SizeBytes)
		return nil
	}
	if st := stateOf(in); st != ec2types.InstanceStateNameRunning && st != ec2types.InstanceStateNamePending {
		log.Warn("lost instance already gone: nothing to archive", "state", orUnknown(string(st)))
		return nil
	}
	timeout, why := archiveWindow(s.cfg.ArchiveTimeout, ev.NoticeDeadline, s.deps.Now())
	if timeout <= 0 {
		log.Warn("lost instance's notice has run out: not archiving", "notice_deadline", ev.NoticeDeadline)
		s.metrics.Add(metrics.ArchiveFailed(s.cfg.Prefix))
		return nil
	}
	var pinned ssh.PublicKey
	if ev.HostKey != "" {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(ev.HostKey))
		if err != nil {
			log.Error("host key does not parse: reading the instance's from its console", "error", err.Error())
		}
		pinned = k
	}
	t, err := s.target(ctx, log, in, ev.JobID, ev.Template, pinned)
	if err == nil {
		t.Logs = ev.Logs
		log.Info("archiving the lost instance's logs", "within", timeout.String(), "bounded_by", why)
		var arch events.Archive
		if arch, err = s.arch.archive(ctx, t, timeout); err == nil {
			log.Info("lost instance's logs archived", "bucket", arch.Bucket, "key", arch.Key, "size_bytes", arch.SizeBytes)
			s.deps.Telemetry.ArchiveStored(arch.SizeBytes)
			return nil
		}
	}
	log.Error("lost instance's logs not archived", "error", err.Error())
	s.metrics.Add(metrics.ArchiveFailed(s.cfg.Prefix))
	return nil
}

// archiveWindow is how long a lost instance's archive may take: the archive timeout, or
// less when the instance's notice (zero: none) runs out sooner; why names the bound.
func archiveWindow(timeout time.Duration, notice, now time.Time) (time.Duration, string) {
	if notice.IsZero() {
		return timeout, "the archive timeout"
	}
	if left := notice.Sub(now); left < timeout {
		return left, "the notice deadline"
	}
	return timeout, "the archive timeout"
}
