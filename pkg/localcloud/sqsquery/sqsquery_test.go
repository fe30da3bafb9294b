package sqsquery

import (
	"encoding/json"
	"net/url"
	"testing"
)

// Known answers published with other SQS implementations' tests (LocalStack, sqslite) and
// AWS's documentation example.
func TestMD5OfMessageAttributes(t *testing.T) {
	tests := []struct {
		name  string
		attrs map[string]messageAttribute
		want  string
	}{
		{"none", nil, ""},
		{"one number", map[string]messageAttribute{"timestamp": {DataType: "Number", StringValue: "1493147359900"}}, "235c5c510d26fb653d073faed50ae77c"},
		{"one string", map[string]messageAttribute{"SellerName": {DataType: "String", StringValue: "Example Store"}}, "cd28f3b68aeee4b2eac9c66f2f694b58"},
		{"sorted by name", map[string]messageAttribute{
			"ordinal":  {DataType: "Number", StringValue: "1"},
			"category": {DataType: "String", StringValue: "test"},
		}, "d21ae90c49061e927f57df5f5d72be1f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := md5OfMessageAttributes(tt.attrs); got != tt.want {
				t.Errorf("md5 = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTranslate(t *testing.T) {
	tests := []struct {
		name, action, form, queueURL string
		want                         string // JSON
		code                         string // refused with this code
	}{
		{name: "create queue with attributes and tags", action: "CreateQueue",
			form: "QueueName=q&Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=5&Tag.1.Key=team&Tag.1.Value=sortie",
			want: `{"Attributes":{"VisibilityTimeout":"5"},"QueueName":"q","tags":{"team":"sortie"}}`},
		{name: "send with attributes", action: "SendMessage",
			form: "QueueUrl=http://h/000000000000/q&MessageBody=hi&DelaySeconds=3&MessageAttribute.1.Name=k&MessageAttribute.1.Value.DataType=String&MessageAttribute.1.Value.StringValue=v" +
				"&MessageAttribute.2.Name=b&MessageAttribute.2.Value.DataType=Binary&MessageAttribute.2.Value.BinaryValue=AAEC",
			want: `{"DelaySeconds":3,"MessageAttributes":{"b":{"DataType":"Binary","BinaryValue":"AAEC"},"k":{"DataType":"String","StringValue":"v"}},"MessageBody":"hi","QueueUrl":"http://h/000000000000/q"}`},
		{name: "queue url from the path", action: "PurgeQueue", queueURL: "http://h/000000000000/q",
			want: `{"QueueUrl":"http://h/000000000000/q"}`},
		{name: "receive", action: "ReceiveMessage",
			form: "QueueUrl=u&MaxNumberOfMessages=10&WaitTimeSeconds=1&AttributeName.1=All&MessageAttributeName.1=sortie.*",
			want: `{"AttributeNames":["All"],"MaxNumberOfMessages":10,"MessageAttributeNames":["sortie.*"],"QueueUrl":"u","WaitTimeSeconds":1}`},
		{name: "batch send", action: "SendMessageBatch",
			form: "QueueUrl=u&SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=two&SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=one",
			want: `{"Entries":[{"Id":"a","MessageBody":"one"},{"Id":"b","MessageBody":"two"}],"QueueUrl":"u"}`},
		{name: "batch delete", action: "DeleteMessageBatch",
			form: "QueueUrl=u&DeleteMessageBatchRequestEntry.1.Id=a&DeleteMessageBatchRequestEntry.1.ReceiptHandle=r",
			want: `{"Entries":[{"Id":"a","ReceiptHandle":"r"}],"QueueUrl":"u"}`},
		{name: "visibility", action: "ChangeMessageVisibility", form: "QueueUrl=u&ReceiptHandle=r&VisibilityTimeout=0",
			want: `{"QueueUrl":"u","ReceiptHandle":"r","VisibilityTimeout":0}`},
		{name: "queue attributes", action: "GetQueueAttributes", form: "QueueUrl=u&AttributeName.1=All",
			want: `{"AttributeNames":["All"],"QueueUrl":"u"}`},
		{name: "not an integer", action: "ReceiveMessage", form: "QueueUrl=u&MaxNumberOfMessages=ten", code: "InvalidParameterValue"},
		{name: "attribute without a type", action: "SendMessage",
			form: "QueueUrl=u&MessageBody=x&MessageAttribute.1.Name=k&MessageAttribute.1.Value.StringValue=v", code: "InvalidParameterValue"},
		{name: "binary value not base64", action: "SendMessage",
			form: "QueueUrl=u&MessageBody=x&MessageAttribute.1.Name=k&MessageAttribute.1.Value.DataType=Binary&MessageAttribute.1.Value.BinaryValue=%21%21", code: "InvalidParameterValue"},
		{name: "unknown action", action: "AddPermission", form: "QueueUrl=u", code: "InvalidAction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form, err := url.ParseQuery(tt.form)
			if err != nil {
				t.Fatal(err)
			}
			got, perr := translate(tt.action, form, tt.queueURL)
			if tt.code != "" {
				if perr == nil || perr.code != tt.code {
					t.Fatalf("translate = %v, %v; want error %s", got, perr, tt.code)
				}
				return
			}
			if perr != nil {
				t.Fatal(perr)
			}
			b, _ := json.Marshal(got)
			if string(b) != tt.want {
				t.Errorf("JSON\n got %s\nwant %s", b, tt.want)
			}
		})
	}
}

func TestQueryCode(t *testing.T) {
	tests := map[string]string{
		"com.amazonaws.sqs#QueueDoesNotExist":     "AWS.SimpleQueueService.NonExistentQueue",
		"QueueDoesNotExist":                       "AWS.SimpleQueueService.NonExistentQueue",
		"AWS.SimpleQueueService.NonExistentQueue": "AWS.SimpleQueueService.NonExistentQueue",
		"QueueNameExists":                         "QueueAlreadyExists",
		"ReceiptHandleIsInvalid":                  "ReceiptHandleIsInvalid",
	}
	for in, want := range tests {
		if got := queryCode(in); got != want {
			t.Errorf("queryCode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWanted(t *testing.T) {
	tests := []struct {
		asked    []string
		name     string
		prefixes bool
		want     bool
	}{
		{nil, "k", true, false},
		{[]string{"All"}, "k", true, true},
		{[]string{".*"}, "k", true, true},
		{[]string{"sortie.*"}, "sortie.job", true, true},
		{[]string{"sortie.*"}, "other", true, false},
		{[]string{"SentTimestamp"}, "SentTimestamp", false, true},
		{[]string{"SentTimestamp"}, "ApproximateReceiveCount", false, false},
		{[]string{".*"}, "SentTimestamp", false, false},
	}
	for _, tt := range tests {
		if got := wanted(tt.asked, tt.name, tt.prefixes); got != tt.want {
			t.Errorf("wanted(%v, %q) = %v", tt.asked, tt.name, got)
		}
	}
}
