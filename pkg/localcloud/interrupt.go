package localcloud

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/sortie-fleet/sortie/pkg/ec2events"
)

// Errors of InterruptSpot and LoseInstance; the returned errors wrap them.
var (
	ErrUnknownInstance = errors.New("no such instance")
	ErrNotSpot         = errors.New("not a spot instance")
	ErrNotRunning      = errors.New("not running")
)

// InterruptSpot interrupts a running spot instance as EC2 does when it takes the capacity
// back: the Spot Instance Interruption Warning now (delivered through the EventBridge rules
// that match it, see notices.go), then, notice later (ec2events.SpotNotice on AWS; tests
// pass seconds) and once the warning is delivered, the termination with the state reason
// Server.SpotInstanceTermination and its state-change notices (shutting-down, then
// terminated). An instance terminated meanwhile is left as it is; if the cloud closes
// first, nothing more happens. It fails for an unknown id, an on-demand instance, an
// instance that is not running, and one already being interrupted.
func (c *Cloud) InterruptSpot(id string, notice time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inst, err := c.faultTargetLocked(id)
	if err != nil {
		return err
	}
	switch {
	case inst.spot == nil:
		return fmt.Errorf("interrupting %s: %w", id, ErrNotSpot)
	case inst.state != stateRunning:
		return fmt.Errorf("interrupting %s: it is %s: %w", id, inst.state.Name, ErrNotRunning)
	case inst.interrupted:
		return fmt.Errorf("interrupting %s: already being interrupted", id)
	}
	inst.interrupted = true
	warned := c.noticeLocked(inst, ec2events.SpotWarning(where, uuid.NewString(), inst.id, time.Now()))
	c.log.Info("spot instance interrupted", "instance", id, "notice", notice)

	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		timer := time.NewTimer(max(notice, 0))
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-inst.stop: // terminated meanwhile
			return
		case <-c.ctx.Done():
			return
		}
		// The warning reaches its queues before the instance goes, however slow delivery is.
		select {
		case <-warned:
		case <-c.ctx.Done():
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed {
			return
		}
		c.terminateLocked(inst, spotInterruption())
	}()
	return nil
}

// LoseInstance terminates a pending or running instance as if someone else had (state
// reason Client.UserInitiatedShutdown, with its state-change notices): an instance lost
// to Sortie. It fails for an unknown id and an instance already shutting down or gone.
func (c *Cloud) LoseInstance(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inst, err := c.faultTargetLocked(id)
	if err != nil {
		return err
	}
	if inst.state != stateRunning && inst.state != statePending {
		return fmt.Errorf("losing %s: it is %s already: %w", id, inst.state.Name, ErrNotRunning)
	}
	c.terminateLocked(inst, userShutdown())
	c.log.Info("instance lost", "instance", id)
	return nil
}

func (c *Cloud) faultTargetLocked(id string) (*instance, error) {
	if c.closed {
		return nil, errors.New("the local cloud is closed")
	}
	inst, ok := c.instances[id]
	if !ok {
		return nil, fmt.Errorf("instance %q: %w", id, ErrUnknownInstance)
	}
	return inst, nil
}
