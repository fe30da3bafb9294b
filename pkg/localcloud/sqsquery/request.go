// Package sqsquery serves SQS's Query protocol (form-encoded requests, XML responses) by
// calling an endpoint that speaks only SQS's JSON protocol: older SDKs and CLIs (Debian's aws
// CLI v2.9, boto3 before 1.34) speak Query, kumo speaks JSON.
package sqsquery

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// Version is the SQS Query API version; a request carrying it is an SQS Query request.
const Version = "2012-11-05"

// paramError is a request the translation refuses before calling the JSON endpoint.
type paramError struct {
	code, message string
}

func (e *paramError) Error() string { return e.code + ": " + e.message }

func invalidValue(format string, args ...any) *paramError {
	return &paramError{code: "InvalidParameterValue", message: fmt.Sprintf(format, args...)}
}

// pairs returns prefix.N.<key>/prefix.N.<value> as a map, or nil when there are none.
func pairs(form url.Values, prefix, key, value string) map[string]string {
	ns := queryform.Indices(form, prefix)
	if len(ns) == 0 {
		return nil
	}
	out := make(map[string]string, len(ns))
	for _, n := range ns {
		base := prefix + "." + strconv.Itoa(n)
		out[form.Get(base+"."+key)] = form.Get(base + "." + value)
	}
	return out
}

// request is the JSON document being built from a Query request.
type request map[string]any

func (r request) str(form url.Values, from, to string) {
	if v, ok := form[from]; ok && len(v) > 0 {
		r[to] = v[0]
	}
}

func (r request) integer(form url.Values, from, to string) *paramError {
	v, ok := form[from]
	if !ok || len(v) == 0 {
		return nil
	}
	n, err := strconv.Atoi(v[0])
	if err != nil {
		return invalidValue("Value %s for parameter %s is invalid. Reason: must be an integer.", v[0], from)
	}
	r[to] = n
	return nil
}

func (r request) strings(form url.Values, from, to string) {
	if l := queryform.List(form, from); len(l) > 0 {
		r[to] = l
	}
}

func (r request) pairs(form url.Values, prefix, key, value, to string) {
	if m := pairs(form, prefix, key, value); m != nil {
		r[to] = m
	}
}

// messageAttribute is one message attribute, in JSON's shape (binary values base64).
type messageAttribute struct {
	DataType    string `json:"DataType"`
	StringValue string `json:"StringValue,omitempty"`
	BinaryValue []byte `json:"BinaryValue,omitempty"`
}

// messageAttributes reads prefix.N.Name and prefix.N.Value.{DataType,StringValue,BinaryValue}.
func messageAttributes(form url.Values, prefix string) (map[string]messageAttribute, *paramError) {
	ns := queryform.Indices(form, prefix)
	if len(ns) == 0 {
		return nil, nil
	}
	out := make(map[string]messageAttribute, len(ns))
	for _, n := range ns {
		base := prefix + "." + strconv.Itoa(n)
		name := form.Get(base + ".Name")
		a := messageAttribute{DataType: form.Get(base + ".Value.DataType"), StringValue: form.Get(base + ".Value.StringValue")}
		if name == "" {
			return nil, invalidValue("The message attribute %s has no name.", base)
		}
		if a.DataType == "" {
			return nil, invalidValue("The message attribute '%s' must contain a non-empty attribute type.", name)
		}
		if b64 := form.Get(base + ".Value.BinaryValue"); b64 != "" {
			b, err := decodeBase64(b64)
			if err != nil {
				return nil, invalidValue("The message attribute '%s' has an invalid binary value (base64): %v", name, err)
			}
			a.BinaryValue = b
		}
		out[name] = a
	}
	return out, nil
}

// message reads one message's body, delay, attributes and FIFO ids under prefix (the
// request itself, or a batch entry).
func message(form url.Values, prefix string, r request) *paramError {
	r.str(form, prefix+"MessageBody", "MessageBody")
	r.str(form, prefix+"MessageDeduplicationId", "MessageDeduplicationId")
	r.str(form, prefix+"MessageGroupId", "MessageGroupId")
	if err := r.integer(form, prefix+"DelaySeconds", "DelaySeconds"); err != nil {
		return err
	}
	attrs, err := messageAttributes(form, prefix+"MessageAttribute")
	if err != nil {
		return err
	}
	if attrs != nil {
		r["MessageAttributes"] = attrs
	}
	return nil
}

// translate builds the JSON request of a Query action; queueURL fills in QueueUrl when the
// form lacks it (clients that send to the queue's URL).
func translate(action string, form url.Values, queueURL string) (request, *paramError) {
	r := request{}
	if q := form.Get("QueueUrl"); q != "" {
		r["QueueUrl"] = q
	} else if queueURL != "" {
		r["QueueUrl"] = queueURL
	}
	switch action {
	case "CreateQueue":
		r.str(form, "QueueName", "QueueName")
		r.pairs(form, "Attribute", "Name", "Value", "Attributes")
		r.pairs(form, "Tag", "Key", "Value", "tags")
	case "GetQueueUrl":
		r.str(form, "QueueName", "QueueName")
		r.str(form, "QueueOwnerAWSAccountId", "QueueOwnerAWSAccountId")
	case "ListQueues":
		r.str(form, "QueueNamePrefix", "QueueNamePrefix")
		r.str(form, "NextToken", "NextToken")
		if err := r.integer(form, "MaxResults", "MaxResults"); err != nil {
			return nil, err
		}
	case "SendMessage":
		if err := message(form, "", r); err != nil {
			return nil, err
		}
	case "SendMessageBatch":
		var entries []request
		for _, n := range queryform.Indices(form, "SendMessageBatchRequestEntry") {
			base := "SendMessageBatchRequestEntry." + strconv.Itoa(n) + "."
			e := request{}
			e.str(form, base+"Id", "Id")
			if err := message(form, base, e); err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		r["Entries"] = entries
	case "ReceiveMessage":
		for from, to := range map[string]string{"MaxNumberOfMessages": "MaxNumberOfMessages", "VisibilityTimeout": "VisibilityTimeout", "WaitTimeSeconds": "WaitTimeSeconds"} {
			if err := r.integer(form, from, to); err != nil {
				return nil, err
			}
		}
		r.strings(form, "AttributeName", "AttributeNames")
		r.strings(form, "MessageSystemAttributeName", "MessageSystemAttributeNames")
		r.strings(form, "MessageAttributeName", "MessageAttributeNames")
		r.str(form, "ReceiveRequestAttemptId", "ReceiveRequestAttemptId")
	case "DeleteMessage":
		r.str(form, "ReceiptHandle", "ReceiptHandle")
	case "DeleteMessageBatch":
		var entries []request
		for _, n := range queryform.Indices(form, "DeleteMessageBatchRequestEntry") {
			base := "DeleteMessageBatchRequestEntry." + strconv.Itoa(n) + "."
			e := request{}
			e.str(form, base+"Id", "Id")
			e.str(form, base+"ReceiptHandle", "ReceiptHandle")
			entries = append(entries, e)
		}
		r["Entries"] = entries
	case "ChangeMessageVisibility":
		r.str(form, "ReceiptHandle", "ReceiptHandle")
		if err := r.integer(form, "VisibilityTimeout", "VisibilityTimeout"); err != nil {
			return nil, err
		}
	case "ChangeMessageVisibilityBatch":
		var entries []request
		for _, n := range queryform.Indices(form, "ChangeMessageVisibilityBatchRequestEntry") {
			base := "ChangeMessageVisibilityBatchRequestEntry." + strconv.Itoa(n) + "."
			e := request{}
			e.str(form, base+"Id", "Id")
			e.str(form, base+"ReceiptHandle", "ReceiptHandle")
			if err := e.integer(form, base+"VisibilityTimeout", "VisibilityTimeout"); err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		r["Entries"] = entries
	case "GetQueueAttributes":
		r.strings(form, "AttributeName", "AttributeNames")
	case "SetQueueAttributes":
		r.pairs(form, "Attribute", "Name", "Value", "Attributes")
	case "PurgeQueue", "DeleteQueue", "ListQueueTags":
	case "TagQueue":
		r.pairs(form, "Tag", "Key", "Value", "Tags")
	case "UntagQueue":
		r.strings(form, "TagKey", "TagKeys")
	default:
		return nil, &paramError{code: "InvalidAction", message: "The action " + action + " is not valid for this endpoint."}
	}
	return r, nil
}
