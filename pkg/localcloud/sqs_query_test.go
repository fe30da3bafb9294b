package localcloud

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// sqsQuery posts one SQS Query request, signed for sqs as the aws CLI signs it, and returns
// the status and body.
func sqsQuery(t *testing.T, c *Cloud, action string, params url.Values) (int, []byte) {
	t.Helper()
	form := url.Values{"Action": {action}, "Version": {"2012-11-05"}}
	for k, v := range params {
		form[k] = v
	}
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, c.URL()+"/", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=test/20261202/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// mustQuery fails unless the request succeeded, and decodes its document into v.
func mustQuery(t *testing.T, c *Cloud, action string, params url.Values, v any) {
	t.Helper()
	status, body := sqsQuery(t, c, action, params)
	if status != http.StatusOK {
		t.Fatalf("%s: status %d: %s", action, status, body)
	}
	var doc struct {
		XMLName   xml.Name
		RequestID string `xml:"ResponseMetadata>RequestId"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil || doc.XMLName.Local != action+"Response" ||
		doc.XMLName.Space != "http://queue.amazonaws.com/doc/2012-11-05/" || doc.RequestID == "" {
		t.Fatalf("%s: document %s (%v)", action, body, err)
	}
	if v != nil {
		if err := xml.Unmarshal(body, v); err != nil {
			t.Fatalf("%s: decoding %s: %v", action, body, err)
		}
	}
}

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

type queryMessage struct {
	MessageID     string `xml:"MessageId"`
	ReceiptHandle string `xml:"ReceiptHandle"`
	MD5OfBody     string `xml:"MD5OfBody"`
	Body          string `xml:"Body"`
	Attributes    []struct {
		Name  string `xml:"Name"`
		Value string `xml:"Value"`
	} `xml:"Attribute"`
	MD5OfMessageAttributes string `xml:"MD5OfMessageAttributes"`
	MessageAttributes      []struct {
		Name  string `xml:"Name"`
		Value struct {
			StringValue string `xml:"StringValue"`
			BinaryValue string `xml:"BinaryValue"`
			DataType    string `xml:"DataType"`
		} `xml:"Value"`
	} `xml:"MessageAttribute"`
}

type receiveResult struct {
	Messages []queryMessage `xml:"ReceiveMessageResult>Message"`
}

// SQS's Query protocol works through the local cloud, and sees the same queues as the JSON
// protocol the Go SDK speaks.
func TestSQSQueryProtocol(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	name := newID("lc-query-")

	var created struct {
		QueueURL string `xml:"CreateQueueResult>QueueUrl"`
	}
	mustQuery(t, c, "CreateQueue", url.Values{"QueueName": {name}, "Attribute.1.Name": {"VisibilityTimeout"}, "Attribute.1.Value": {"30"}}, &created)
	if !strings.HasSuffix(created.QueueURL, "/"+name) {
		t.Fatalf("queue url %q", created.QueueURL)
	}
	var got struct {
		QueueURL string `xml:"GetQueueUrlResult>QueueUrl"`
	}
	mustQuery(t, c, "GetQueueUrl", url.Values{"QueueName": {name}}, &got)
	q := got.QueueURL
	if q != created.QueueURL {
		t.Fatalf("GetQueueUrl = %q, CreateQueue said %q", q, created.QueueURL)
	}
	var listed struct {
		URLs []string `xml:"ListQueuesResult>QueueUrl"`
	}
	mustQuery(t, c, "ListQueues", url.Values{"QueueNamePrefix": {name}}, &listed)
	if len(listed.URLs) != 1 || listed.URLs[0] != q {
		t.Errorf("ListQueues = %v", listed.URLs)
	}

	// Send with attributes: the MD5s are those clients compute.
	var sent struct {
		MD5OfBody  string `xml:"SendMessageResult>MD5OfMessageBody"`
		MD5OfAttrs string `xml:"SendMessageResult>MD5OfMessageAttributes"`
		MessageID  string `xml:"SendMessageResult>MessageId"`
	}
	mustQuery(t, c, "SendMessage", url.Values{
		"QueueUrl": {q}, "MessageBody": {`{"job_id":"j1"}`},
		"MessageAttribute.1.Name": {"sortie_event"}, "MessageAttribute.1.Value.DataType": {"String"}, "MessageAttribute.1.Value.StringValue": {"JobSubmitted"},
		"MessageAttribute.2.Name": {"blob"}, "MessageAttribute.2.Value.DataType": {"Binary"}, "MessageAttribute.2.Value.BinaryValue": {"AAEC"},
	}, &sent)
	if sent.MD5OfBody != md5Hex(`{"job_id":"j1"}`) || sent.MD5OfAttrs == "" || sent.MessageID == "" {
		t.Fatalf("SendMessage result %+v", sent)
	}

	// The JSON protocol sees the message the Query protocol sent.
	js := sqs.NewFromConfig(awsx.ForEndpoint(c.URL()))
	peek, err := js.GetQueueAttributes(ctxT(t), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(q), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages}})
	if err != nil || peek.Attributes["ApproximateNumberOfMessages"] != "1" {
		t.Fatalf("JSON GetQueueAttributes: %v %v", err, peek)
	}

	var recv receiveResult
	mustQuery(t, c, "ReceiveMessage", url.Values{"QueueUrl": {q}, "WaitTimeSeconds": {"1"}, "AttributeName.1": {"ApproximateReceiveCount"}, "MessageAttributeName.1": {"All"}}, &recv)
	if len(recv.Messages) != 1 {
		t.Fatalf("received %+v", recv)
	}
	m := recv.Messages[0]
	if m.Body != `{"job_id":"j1"}` || m.MD5OfBody != md5Hex(m.Body) || m.MessageID != sent.MessageID || m.MD5OfMessageAttributes != sent.MD5OfAttrs {
		t.Errorf("message %+v, sent %+v", m, sent)
	}
	if len(m.Attributes) != 1 || m.Attributes[0].Name != "ApproximateReceiveCount" || m.Attributes[0].Value != "1" {
		t.Errorf("system attributes %+v, want only ApproximateReceiveCount=1", m.Attributes)
	}
	if len(m.MessageAttributes) != 2 || m.MessageAttributes[0].Name != "blob" || m.MessageAttributes[0].Value.BinaryValue != "AAEC" ||
		m.MessageAttributes[1].Value.StringValue != "JobSubmitted" {
		t.Errorf("message attributes %+v", m.MessageAttributes)
	}

	mustQuery(t, c, "ChangeMessageVisibility", url.Values{"QueueUrl": {q}, "ReceiptHandle": {m.ReceiptHandle}, "VisibilityTimeout": {"0"}}, nil)
	var again receiveResult
	mustQuery(t, c, "ReceiveMessage", url.Values{"QueueUrl": {q}, "WaitTimeSeconds": {"1"}}, &again)
	if len(again.Messages) != 1 || len(again.Messages[0].MessageAttributes) != 0 || again.Messages[0].MD5OfMessageAttributes != "" {
		t.Fatalf("after ChangeMessageVisibility 0, without attribute names: %+v", again)
	}
	mustQuery(t, c, "DeleteMessage", url.Values{"QueueUrl": {q}, "ReceiptHandle": {again.Messages[0].ReceiptHandle}}, nil)

	var batch struct {
		Entries []struct {
			ID        string `xml:"Id"`
			MD5OfBody string `xml:"MD5OfMessageBody"`
		} `xml:"SendMessageBatchResult>SendMessageBatchResultEntry"`
	}
	mustQuery(t, c, "SendMessageBatch", url.Values{"QueueUrl": {q},
		"SendMessageBatchRequestEntry.1.Id": {"a"}, "SendMessageBatchRequestEntry.1.MessageBody": {"one"},
		"SendMessageBatchRequestEntry.2.Id": {"b"}, "SendMessageBatchRequestEntry.2.MessageBody": {"two"},
	}, &batch)
	if len(batch.Entries) != 2 || batch.Entries[0].MD5OfBody != md5Hex("one") || batch.Entries[1].MD5OfBody != md5Hex("two") {
		t.Fatalf("SendMessageBatch %+v", batch)
	}
	var both receiveResult
	mustQuery(t, c, "ReceiveMessage", url.Values{"QueueUrl": {q}, "MaxNumberOfMessages": {"10"}, "WaitTimeSeconds": {"1"}}, &both)
	if len(both.Messages) != 2 {
		t.Fatalf("received %d of the batch", len(both.Messages))
	}
	var deleted struct {
		IDs []string `xml:"DeleteMessageBatchResult>DeleteMessageBatchResultEntry>Id"`
	}
	mustQuery(t, c, "DeleteMessageBatch", url.Values{"QueueUrl": {q},
		"DeleteMessageBatchRequestEntry.1.Id": {"x"}, "DeleteMessageBatchRequestEntry.1.ReceiptHandle": {both.Messages[0].ReceiptHandle},
		"DeleteMessageBatchRequestEntry.2.Id": {"y"}, "DeleteMessageBatchRequestEntry.2.ReceiptHandle": {both.Messages[1].ReceiptHandle},
	}, &deleted)
	if strings.Join(deleted.IDs, ",") != "x,y" {
		t.Errorf("DeleteMessageBatch entries %v", deleted.IDs)
	}

	mustQuery(t, c, "SetQueueAttributes", url.Values{"QueueUrl": {q}, "Attribute.1.Name": {"DelaySeconds"}, "Attribute.1.Value": {"2"}}, nil)
	var attrs struct {
		Attributes []struct {
			Name  string `xml:"Name"`
			Value string `xml:"Value"`
		} `xml:"GetQueueAttributesResult>Attribute"`
	}
	mustQuery(t, c, "GetQueueAttributes", url.Values{"QueueUrl": {q}, "AttributeName.1": {"DelaySeconds"}}, &attrs)
	if len(attrs.Attributes) != 1 || attrs.Attributes[0].Value != "2" {
		t.Errorf("GetQueueAttributes %+v", attrs)
	}
	mustQuery(t, c, "PurgeQueue", url.Values{"QueueUrl": {q}}, nil)
	mustQuery(t, c, "DeleteQueue", url.Values{"QueueUrl": {q}}, nil)
	if _, err := js.GetQueueUrl(ctxT(t), &sqs.GetQueueUrlInput{QueueName: aws.String(name)}); err == nil {
		t.Error("queue still there after the Query DeleteQueue")
	}
}

// Errors come back in SQS's Query error document with the Query protocol's codes; a request
// the translation refuses never reaches the queue.
func TestSQSQueryErrors(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	name := newID("lc-query-err-")
	var created struct {
		QueueURL string `xml:"CreateQueueResult>QueueUrl"`
	}
	mustQuery(t, c, "CreateQueue", url.Values{"QueueName": {name}}, &created)

	tests := []struct {
		name, action string
		params       url.Values
		status       int
		code         string
	}{
		{"missing queue", "GetQueueUrl", url.Values{"QueueName": {name + "-nope"}}, http.StatusBadRequest, "AWS.SimpleQueueService.NonExistentQueue"},
		{"not an integer", "ReceiveMessage", url.Values{"QueueUrl": {created.QueueURL}, "MaxNumberOfMessages": {"ten"}}, http.StatusBadRequest, "InvalidParameterValue"},
		{"attribute without a type", "SendMessage", url.Values{"QueueUrl": {created.QueueURL}, "MessageBody": {"x"},
			"MessageAttribute.1.Name": {"k"}, "MessageAttribute.1.Value.StringValue": {"v"}}, http.StatusBadRequest, "InvalidParameterValue"},
		{"unknown action", "AddPermission", url.Values{"QueueUrl": {created.QueueURL}}, http.StatusBadRequest, "InvalidAction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := sqsQuery(t, c, tt.action, tt.params)
			var doc struct {
				XMLName xml.Name `xml:"ErrorResponse"`
				Error   struct {
					Type    string `xml:"Type"`
					Code    string `xml:"Code"`
					Message string `xml:"Message"`
				} `xml:"Error"`
				RequestID string `xml:"RequestId"`
			}
			if err := xml.Unmarshal(body, &doc); err != nil {
				t.Fatalf("error body %s: %v", body, err)
			}
			if status != tt.status || doc.Error.Code != tt.code || doc.Error.Type != "Sender" || doc.Error.Message == "" || doc.RequestID == "" {
				t.Errorf("status %d, body %s; want %d %s", status, body, tt.status, tt.code)
			}
		})
	}
	// The refused SendMessage left the queue empty.
	var attrs struct {
		Values []string `xml:"GetQueueAttributesResult>Attribute>Value"`
	}
	mustQuery(t, c, "GetQueueAttributes", url.Values{"QueueUrl": {created.QueueURL}, "AttributeName.1": {"ApproximateNumberOfMessages"}}, &attrs)
	if len(attrs.Values) != 1 || attrs.Values[0] != "0" {
		t.Errorf("queue depth after refused requests: %v", attrs.Values)
	}
}
