package infra

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

// Statement ids of the generated policies. deployments/terraform/main.tf uses the same ones;
// TestTerraformMatchesGenerators keeps the two in step.
const (
	SidDenyInsecureTransport         = "DenyInsecureTransport"
	SidDenyIncorrectEncryptionHeader = "DenyIncorrectEncryptionHeader"
	SidDenyUnencryptedObjectUploads  = "DenyUnencryptedObjectUploads"
	SidAllowTopicSendMessage         = "AllowTopicSendMessage"
	SidAllowRuleSendMessage          = "AllowRuleSendMessage"
	SidAllowProducersPublish         = "AllowProducersPublish"
	SidDenyPublishByOthers           = "DenyPublishByOthers"
)

const policyVersion = "2012-10-17"

// policyDocument is an IAM policy document; field order fixes the JSON's key order.
type policyDocument struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid       string                             `json:"Sid"`
	Effect    string                             `json:"Effect"`
	Principal any                                `json:"Principal"`
	Action    string                             `json:"Action"`
	Resource  stringOrList                       `json:"Resource"`
	Condition map[string]map[string]stringOrList `json:"Condition,omitempty"` // encoding/json sorts map keys
}

// stringOrList marshals one element as a plain string, several as a list, as IAM writes them.
type stringOrList []string

func (s stringOrList) MarshalJSON() ([]byte, error) {
	if len(s) == 1 {
		return json.Marshal(s[0])
	}
	return json.Marshal([]string(s))
}

// BucketPolicy is the log bucket's policy: deny every request that does not use TLS, and
// every upload that does not ask for SSE-KMS (a wrong x-amz-server-side-encryption header,
// or none). The output is deterministic, indented JSON.
func BucketPolicy(bucket string) ([]byte, error) {
	if bucket == "" {
		return nil, errors.New("bucket policy: empty bucket name")
	}
	arn := "arn:aws:s3:::" + bucket
	objects := arn + "/*"
	return marshalPolicy(policyDocument{
		Version: policyVersion,
		Statement: []statement{
			{
				Sid:       SidDenyInsecureTransport,
				Effect:    "Deny",
				Principal: "*",
				Action:    "s3:*",
				Resource:  stringOrList{arn, objects},
				Condition: map[string]map[string]stringOrList{"Bool": {"aws:SecureTransport": {"false"}}},
			},
			{
				Sid:       SidDenyIncorrectEncryptionHeader,
				Effect:    "Deny",
				Principal: "*",
				Action:    "s3:PutObject",
				Resource:  stringOrList{objects},
				Condition: map[string]map[string]stringOrList{"StringNotEquals": {"s3:x-amz-server-side-encryption": {"aws:kms"}}},
			},
			{
				Sid:       SidDenyUnencryptedObjectUploads,
				Effect:    "Deny",
				Principal: "*",
				Action:    "s3:PutObject",
				Resource:  stringOrList{objects},
				Condition: map[string]map[string]stringOrList{"Null": {"s3:x-amz-server-side-encryption": {"true"}}},
			},
		},
	})
}

// QueuePolicy lets the SNS topic topicARN, and nothing else, send to the queue queueARN.
func QueuePolicy(queueARN, topicARN string) ([]byte, error) {
	if queueARN == "" || topicARN == "" {
		return nil, fmt.Errorf("queue policy: empty ARN (queue %q, topic %q)", queueARN, topicARN)
	}
	return marshalPolicy(policyDocument{
		Version: policyVersion,
		Statement: []statement{{
			Sid:       SidAllowTopicSendMessage,
			Effect:    "Allow",
			Principal: map[string]string{"Service": "sns.amazonaws.com"},
			Action:    "sqs:SendMessage",
			Resource:  stringOrList{queueARN},
			Condition: map[string]map[string]stringOrList{"ArnEquals": {"aws:SourceArn": {topicARN}}},
		}},
	})
}

// RuleQueuePolicy lets EventBridge send to the queue queueARN only on behalf of the rule
// ruleARN (aws:SourceArn): the policy of the queue EC2's notices arrive in.
func RuleQueuePolicy(queueARN, ruleARN string) ([]byte, error) {
	if queueARN == "" || ruleARN == "" {
		return nil, fmt.Errorf("rule queue policy: empty ARN (queue %q, rule %q)", queueARN, ruleARN)
	}
	return marshalPolicy(policyDocument{
		Version: policyVersion,
		Statement: []statement{{
			Sid:       SidAllowRuleSendMessage,
			Effect:    "Allow",
			Principal: map[string]string{"Service": "events.amazonaws.com"},
			Action:    "sqs:SendMessage",
			Resource:  stringOrList{queueARN},
			Condition: map[string]map[string]stringOrList{"ArnEquals": {"aws:SourceArn": {ruleARN}}},
		}},
	})
}

// ProducerARNs are the IAM roles allowed to publish eventType in the stack (bus.Producers:
// a service's task role, the upstream role for JobSubmitted, the worker role for
// TaskReported), as ARNs in accountID.
func ProducerARNs(topo bus.Topology, eventType, accountID string) ([]string, error) {
	producers, ok := bus.Producers[eventType]
	if !ok || accountID == "" {
		return nil, fmt.Errorf("producers of %q in account %q: unknown event type or empty account", eventType, accountID)
	}
	var out []string
	for _, p := range producers {
		role := topo.RoleName(p)
		switch p {
		case bus.UpstreamProducer:
			role = topo.UpstreamRoleName()
		case bus.WorkerProducer:
			role = topo.WorkerRoleName()
		}
		out = append(out, "arn:aws:iam::"+accountID+":role/"+role)
	}
	return out, nil
}

// TopicPolicy is the policy of eventType's topic: only its producers (ProducerARNs) may
// publish. The Allow admits them; the Deny refuses sns:Publish to every other principal,
// so that identity policies in the account cannot grant it either. The topic ARN's region
// is a wildcard, so one policy serves a stack in any region.
func TopicPolicy(topo bus.Topology, eventType, accountID string) ([]byte, error) {
	if err := topo.Validate(); err != nil {
		return nil, fmt.Errorf("topic policy: %w", err)
	}
	arns, err := ProducerARNs(topo, eventType, accountID)
	if err != nil {
		return nil, fmt.Errorf("topic policy: %w", err)
	}
	topic := "arn:aws:sns:*:" + accountID + ":" + topo.TopicName(eventType)
	return marshalPolicy(policyDocument{
		Version: policyVersion,
		Statement: []statement{
			{
				Sid:       SidAllowProducersPublish,
				Effect:    "Allow",
				Principal: map[string]stringOrList{"AWS": arns},
				Action:    "sns:Publish",
				Resource:  stringOrList{topic},
			},
			{
				Sid:       SidDenyPublishByOthers,
				Effect:    "Deny",
				Principal: "*",
				Action:    "sns:Publish",
				Resource:  stringOrList{topic},
				Condition: map[string]map[string]stringOrList{"ArnNotEquals": {"aws:PrincipalArn": arns}},
			},
		},
	})
}

// RedrivePolicy is a queue's RedrivePolicy attribute: after maxReceiveCount receives a
// message moves to the dead-letter queue dlqARN.
func RedrivePolicy(dlqARN string, maxReceiveCount int) ([]byte, error) {
	if dlqARN == "" || maxReceiveCount < 1 {
		return nil, fmt.Errorf("redrive policy: want a DLQ ARN and maxReceiveCount >= 1, got %q and %d", dlqARN, maxReceiveCount)
	}
	return json.Marshal(struct {
		DeadLetterTargetArn string `json:"deadLetterTargetArn"`
		MaxReceiveCount     int    `json:"maxReceiveCount"`
	}{dlqARN, maxReceiveCount})
}

func marshalPolicy(doc policyDocument) ([]byte, error) {
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding policy: %w", err)
	}
	return b, nil
}

// sameJSON reports whether two JSON documents mean the same policy: whitespace, key order,
// a one-element list versus its element, and 5 versus "5" do not matter (AWS may hand a
// stored policy back reformatted). Invalid JSON is never the same as anything.
func sameJSON(a, b string) bool {
	na, errA := normalizeJSON(a)
	nb, errB := normalizeJSON(b)
	return errA == nil && errB == nil && reflect.DeepEqual(na, nb)
}

func normalizeJSON(s string) (any, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(strings.TrimSpace(s))))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return normalize(v), nil
}

func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case []any:
		if len(t) == 1 {
			return normalize(t[0])
		}
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	case json.Number:
		return t.String()
	case bool:
		return fmt.Sprint(t)
	}
	return v
}
