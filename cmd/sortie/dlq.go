package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

// DlqCmd is `sortie dlq`: the stack's dead letters.
type DlqCmd struct {
	List    DlqListCmd    `cmd:"" help:"List every DLQ's messages with their reason (they stay in the DLQ)."`
	Redrive DlqRedriveCmd `cmd:"" help:"Move a DLQ's messages (or one, --id) back to the queue they came from."`
}

// DlqListCmd is `sortie dlq list`.
type DlqListCmd struct {
	JSON bool `name:"json" help:"Print the messages as JSON."`
}

// DlqRedriveCmd is `sortie dlq redrive QUEUE [--id ID]`.
type DlqRedriveCmd struct {
	Queue string `arg:"" help:"The DLQ, or the queue whose DLQ it is (e.g. sortie-planner-job-submitted)."`
	ID    string `name:"id" help:"Only the message with this id (as dlq list prints it)."`
}

// DeadLetter is one DLQ message as `dlq list` shows it.
type DeadLetter struct {
	DLQ       string    `json:"dlq"`
	ID        string    `json:"id"` // the message's id across deliveries (_watermill_message_uuid), else SQS's
	JobID     string    `json:"job_id,omitempty"`
	EventType string    `json:"event_type,omitempty"`
	SentAt    time.Time `json:"sent_at"`
	Receives  int       `json:"receives"`
	Reason    string    `json:"reason"`
}

const watermillUUID = "_watermill_message_uuid"

// dlqs lists the stack's dead-letter queues: the consuming queues', the timer queues' and
// the EC2 events queue's.
func dlqs(topo bus.Topology) []string {
	var out []string
	for _, s := range topo.Subscriptions() {
		out = append(out, s.DLQ)
	}
	for _, svc := range bus.TimerServices {
		out = append(out, bus.DLQName(topo.TimerQueueName(svc)))
	}
	return append(out, bus.DLQName(topo.EC2EventsQueueName()))
}

// peek receives every message of a queue without keeping it: each is made visible again
// at once. fn sees each message once. An empty queue (by its approximate count) is not
// polled at all.
//
// Only messages sent before peek began are seen: one that arrives meanwhile (say, a
// redriven message dead-lettered again) waits for the next run.
func peek(ctx context.Context, api *sqs.Client, url string, fn func(m sqstypes.Message) error) error {
	began := time.Now()
	a, err := api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		},
	})
	if err != nil {
		return err
	}
	// Messages in flight (another peek's) count too: they come back.
	if a.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)] == "0" &&
		a.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible)] == "0" {
		return nil
	}
	seen := map[string]bool{}
	var handles []*string
	defer func() {
		for _, h := range handles {
			_, _ = api.ChangeMessageVisibility(context.WithoutCancel(ctx), &sqs.ChangeMessageVisibilityInput{QueueUrl: aws.String(url), ReceiptHandle: h, VisibilityTimeout: 0})
		}
	}()
	for {
		out, err := api.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(url), MaxNumberOfMessages: 10, VisibilityTimeout: 30, WaitTimeSeconds: 1,
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll},
		})
		if err != nil {
			return err
		}
		fresh := 0
		for _, m := range out.Messages {
			handles = append(handles, m.ReceiptHandle)
			if seen[aws.ToString(m.MessageId)] || sentAt(m).After(began) {
				continue
			}
			seen[aws.ToString(m.MessageId)] = true
			fresh++
			if err := fn(m); err != nil {
				return err
			}
		}
		if fresh == 0 {
			return nil
		}
	}
}

// sentAt is when SQS received the message (zero when it does not say).
func sentAt(m sqstypes.Message) time.Time {
	ms, err := strconv.ParseInt(m.Attributes[string(sqstypes.MessageSystemAttributeNameSentTimestamp)], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func attr(m sqstypes.Message, k string) string {
	if v, ok := m.MessageAttributes[k]; ok {
		return aws.ToString(v.StringValue)
	}
	return ""
}

// Run lists every DLQ's messages.
func (c *DlqListCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	topo := bus.Topology{Prefix: g.Prefix}
	api := sqs.NewFromConfig(cfg)
	led, err := ledger.New(ledger.Config{API: dynamodb.NewFromConfig(cfg), Table: topo.LedgerTableName()})
	if err != nil {
		return err
	}
	var all []DeadLetter
	for _, q := range dlqs(topo) {
		url, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(q)})
		if awsx.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("dlq %s: %w", q, err)
		}
		err = peek(ctx, api, aws.ToString(url.QueueUrl), func(m sqstypes.Message) error {
			d := DeadLetter{DLQ: q, ID: attr(m, watermillUUID), JobID: attr(m, bus.AttrJobID), EventType: attr(m, bus.AttrEventType), Reason: attr(m, bus.AttrError)}
			if d.ID == "" {
				d.ID = aws.ToString(m.MessageId)
			}
			d.SentAt = sentAt(m)
			d.Receives, _ = strconv.Atoi(m.Attributes[string(sqstypes.MessageSystemAttributeNameApproximateReceiveCount)])
			if d.Reason == "" {
				if d.Reason, err = led.DeadLetterReason(ctx, d.ID); err != nil {
					return err
				}
			}
			if d.Reason == "" {
				d.Reason = "(no reason recorded)"
			}
			all = append(all, d)
			return nil
		})
		if err != nil {
			return fmt.Errorf("dlq %s: %w", q, err)
		}
	}
	if c.JSON {
		b, err := json.MarshalIndent(all, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.Stdout, "%s\n", b)
		return err
	}
	if len(all) == 0 {
		_, err := fmt.Fprintln(g.Stdout, "no dead letters")
		return err
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DLQ\tID\tJOB\tEVENT\tSENT\tREASON")
	for _, d := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.DLQ, d.ID, dash(d.JobID), dash(d.EventType), d.SentAt.Format(time.RFC3339), d.Reason)
	}
	return tw.Flush()
}

// Run moves the DLQ's messages (or the one with --id) back to their source queue, with
// their body and attributes but not the DLQ's reason, and deletes them from the DLQ.
func (c *DlqRedriveCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	dlq, source := c.Queue, strings.TrimSuffix(c.Queue, "-dlq")
	if dlq == source {
		dlq = bus.DLQName(source)
	}
	known := false
	for _, q := range dlqs(bus.Topology{Prefix: g.Prefix}) {
		known = known || q == dlq
	}
	if !known {
		return fmt.Errorf("%s is not a DLQ of stack %s", dlq, g.Prefix)
	}
	api := sqs.NewFromConfig(cfg)
	dlqURL, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(dlq)})
	if err != nil {
		return fmt.Errorf("dlq %s: %w", dlq, err)
	}
	srcURL, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(source)})
	if err != nil {
		return fmt.Errorf("queue %s: %w", source, err)
	}
	moved := 0
	err = peek(ctx, api, aws.ToString(dlqURL.QueueUrl), func(m sqstypes.Message) error {
		id := attr(m, watermillUUID)
		if c.ID != "" && c.ID != id && c.ID != aws.ToString(m.MessageId) {
			return nil
		}
		attrs := map[string]sqstypes.MessageAttributeValue{}
		for k, v := range m.MessageAttributes {
			if k != bus.AttrError && k != bus.AttrSourceQueue {
				attrs[k] = v
			}
		}
		if _, err := api.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: srcURL.QueueUrl, MessageBody: m.Body, MessageAttributes: attrs}); err != nil {
			return fmt.Errorf("sending %s back to %s: %w", id, source, err)
		}
		if _, err := api.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: dlqURL.QueueUrl, ReceiptHandle: m.ReceiptHandle}); err != nil {
			return fmt.Errorf("deleting %s from %s (it is back in %s too): %w", id, dlq, source, err)
		}
		moved++
		return nil
	})
	if err != nil {
		return err
	}
	if c.ID != "" && moved == 0 {
		return errors.New("no message " + c.ID + " in " + dlq)
	}
	_, err = fmt.Fprintf(g.Stdout, "moved %d messages from %s to %s\n", moved, dlq, source)
	return err
}
