package awsx

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go/middleware"
)

// Call is one AWS request a Sortie service made, as IAM sees it: the action it needs, the
// resources it touches (ARNs, or "*" where none can be derived) and the condition keys the
// request carries.
type Call struct {
	// Service is the Sortie service that made the call (planner, reaper, ...).
	Service string
	// Operation is the SDK's "<ServiceID>.<Operation>", e.g. "SQS.ReceiveMessage".
	Operation string
	// Action is the IAM action, e.g. "sqs:ReceiveMessage" ("s3:ListBucket" for ListObjectsV2).
	Action string
	// Resources are the ARNs the action applies to; ["*"] when the action has no resource.
	Resources []string
	// Context holds the request's condition keys, e.g. "aws:RequestTag/sortie:stack" or
	// "cloudwatch:namespace". "aws:ResourceTag/..." keys are filled in by whoever knows the
	// resource's tags (see Recorder.ResourceTags).
	Context map[string][]string
}

// Recorder records every AWS call made through the configs it wraps. It is off unless a
// config is wrapped: tests (pkg/devstack) give each service its own wrapped config and then
// check the calls against the service's IAM policy.
type Recorder struct {
	// Account is the account id used in ARNs that a request does not carry (EC2 instances);
	// queue URLs and topic ARNs carry their own.
	Account string

	mu    sync.Mutex
	calls []Call
	sink  io.Writer // when set, each call is also written as a JSON line
}

// EnvCallLog names a file to which Load appends every AWS call of the process as JSON
// lines (Call), for checking a separately started process (the worker on an instance,
// `task up`'s services) against its IAM policy. Unset: nothing is recorded.
const EnvCallLog = "SORTIE_AWS_CALL_LOG"

// ReadCallLog reads the calls a process appended to an EnvCallLog file.
func ReadCallLog(path string) ([]Call, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading call log: %w", err)
	}
	defer f.Close()
	var out []Call
	dec := json.NewDecoder(f)
	for {
		var c Call
		if err := dec.Decode(&c); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("reading call log %s: %w", path, err)
		}
		out = append(out, c)
	}
}

// WithAccount fills in the account of the call's ARNs that lack one: a recorder made from
// EnvCallLog does not know its account (that would take an STS call), so a request naming a
// queue by name or an instance by id records an ARN without it.
func (c Call) WithAccount(account string) Call {
	res := slices.Clone(c.Resources)
	for i, r := range res {
		parts := strings.SplitN(r, ":", 6)
		if len(parts) == 6 && parts[4] == "" && parts[3] != "" { // S3 and IAM ARNs have no region and keep no account
			parts[4] = account
			res[i] = strings.Join(parts, ":")
		}
	}
	c.Resources = res
	return c
}

// wrapFromEnv wraps cfg with a recorder writing to the EnvCallLog file when it is set.
func wrapFromEnv(cfg aws.Config, service string) (aws.Config, error) {
	path := os.Getenv(EnvCallLog)
	if path == "" {
		return cfg, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return cfg, fmt.Errorf("%s: %w", EnvCallLog, err)
	}
	r := &Recorder{sink: f}
	return r.Wrap(cfg, service), nil
}

// NewRecorder returns an empty recorder for account.
func NewRecorder(account string) *Recorder { return &Recorder{Account: account} }

// Wrap returns a copy of cfg whose clients record each call as made by service.
func (r *Recorder) Wrap(cfg aws.Config, service string) aws.Config {
	cfg = cfg.Copy()
	cfg.APIOptions = append(slices.Clone(cfg.APIOptions), func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("SortieCallRecorder",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				r.record(service, cfg.Region, awsmiddleware.GetServiceID(ctx), middleware.GetOperationName(ctx), in.Parameters)
				return next.HandleInitialize(ctx, in)
			}), middleware.After)
	})
	return cfg
}

// Calls returns what has been recorded so far.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// ResourceTags adds aws:ResourceTag/<key> condition keys to the recorded calls on EC2
// instances, from tagsOf(instance id) (the instance's tags, looked up by the caller).
func (r *Recorder) ResourceTags(tagsOf func(instanceID string) map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range r.calls {
		for _, res := range c.Resources {
			_, id, ok := strings.Cut(res, ":instance/")
			if !ok || id == "*" {
				continue
			}
			for k, v := range tagsOf(id) {
				key := "aws:ResourceTag/" + k
				if c.Context == nil {
					c.Context = map[string][]string{}
				}
				if !slices.Contains(c.Context[key], v) {
					c.Context[key] = append(c.Context[key], v)
				}
			}
		}
		r.calls[i] = c
	}
}

func (r *Recorder) record(service, region, serviceID, op string, params any) {
	calls := r.describe(service, region, serviceID, op, params)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sink == nil {
		r.calls = append(r.calls, calls...)
		return
	}
	for _, c := range calls {
		if line, err := json.Marshal(c); err == nil {
			_, _ = r.sink.Write(append(line, '\n')) // one write per line: appends from several processes stay whole
		}
	}
}

// iamPrefix maps the SDK's service ids to IAM's service prefixes.
var iamPrefix = map[string]string{
	"SQS": "sqs", "SNS": "sns", "S3": "s3", "EC2": "ec2", "CloudWatch": "cloudwatch", "STS": "sts",
	"DynamoDB": "dynamodb", "KMS": "kms", "Secrets Manager": "secretsmanager", "SSM": "ssm",
	"CloudWatch Logs": "logs", "IAM": "iam", "ECS": "ecs",
}

// actionNames are the operations whose IAM action has another name.
var actionNames = map[string]string{
	"s3:ListObjectsV2": "s3:ListBucket", "s3:ListObjects": "s3:ListBucket", "s3:HeadBucket": "s3:ListBucket",
	"s3:HeadObject": "s3:GetObject", "s3:CreateMultipartUpload": "s3:PutObject", "s3:UploadPart": "s3:PutObject",
	"s3:CompleteMultipartUpload": "s3:PutObject", "s3:DeleteObjects": "s3:DeleteObject",
	"s3:ListMultipartUploads": "s3:ListBucketMultipartUploads", "s3:ListParts": "s3:ListMultipartUploadParts",
	"sqs:SendMessageBatch": "sqs:SendMessage", "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
	"sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility", "sns:PublishBatch": "sns:Publish",
}

// describe turns one request into the calls IAM authorises: one per action (a DynamoDB
// transaction is authorised item by item).
func (r *Recorder) describe(service, region, serviceID, op string, params any) []Call {
	prefix, ok := iamPrefix[serviceID]
	if !ok {
		prefix = strings.ToLower(strings.ReplaceAll(serviceID, " ", ""))
	}
	action := prefix + ":" + op
	if a, ok := actionNames[action]; ok {
		action = a
	}
	v := reflect.Indirect(reflect.ValueOf(params))
	if prefix == "dynamodb" && (op == "TransactWriteItems" || op == "TransactGetItems") {
		var out []Call
		items := field(v, "TransactItems")
		for i := 0; items.IsValid() && i < items.Len(); i++ {
			item := reflect.Indirect(items.Index(i))
			for _, kind := range []string{"Put", "Update", "Delete", "ConditionCheck", "Get"} {
				sub := reflect.Indirect(field(item, kind))
				if !sub.IsValid() {
					continue
				}
				a := map[string]string{"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
					"ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}[kind]
				out = append(out, Call{Service: service, Operation: serviceID + "." + op, Action: "dynamodb:" + a,
					Resources: []string{r.arn(prefix, region, str(sub, "TableName"))}})
			}
		}
		return out
	}
	c := Call{Service: service, Operation: serviceID + "." + op, Action: action}
	c.Resources, c.Context = r.resources(prefix, region, op, v)
	if len(c.Resources) == 0 {
		c.Resources = []string{"*"}
	}
	return []Call{c}
}

// resources derives the ARNs and condition keys of a request from its input's fields.
func (r *Recorder) resources(prefix, region, op string, v reflect.Value) ([]string, map[string][]string) {
	var res []string
	ctx := map[string][]string{}
	switch prefix {
	case "sqs":
		if u := str(v, "QueueUrl"); u != "" {
			res = append(res, queueARN(region, u))
		} else if n := str(v, "QueueName"); n != "" {
			res = append(res, "arn:aws:sqs:"+region+":"+r.Account+":"+n)
		}
	case "sns":
		for _, f := range []string{"TopicArn", "TargetArn", "ResourceArn"} {
			if a := str(v, f); a != "" {
				res = append(res, a)
			}
		}
	case "s3":
		if b := str(v, "Bucket"); b != "" {
			if k := str(v, "Key"); k != "" {
				res = append(res, "arn:aws:s3:::"+b+"/"+k)
			} else {
				res = append(res, "arn:aws:s3:::"+b)
				if p := str(v, "Prefix"); p != "" {
					ctx["s3:prefix"] = []string{p}
				}
			}
		}
		if sse := field(v, "ServerSideEncryption"); sse.IsValid() && sse.Kind() == reflect.String && sse.String() != "" {
			ctx["s3:x-amz-server-side-encryption"] = []string{sse.String()}
		}
	case "dynamodb":
		if t := str(v, "TableName"); t != "" {
			res = append(res, r.arn(prefix, region, t))
		}
	case "cloudwatch":
		if n := str(v, "Namespace"); n != "" {
			ctx["cloudwatch:namespace"] = []string{n}
		}
	case "ec2":
		for _, f := range []string{"InstanceIds", "Resources"} {
			ids := field(v, f)
			for i := 0; ids.IsValid() && ids.Kind() == reflect.Slice && i < ids.Len(); i++ {
				if id := ids.Index(i).String(); strings.HasPrefix(id, "i-") {
					res = append(res, "arn:aws:ec2:"+region+":"+r.Account+":instance/"+id)
				}
			}
		}
		if id := str(v, "InstanceId"); id != "" {
			res = append(res, "arn:aws:ec2:"+region+":"+r.Account+":instance/"+id)
		}
		requestTags(v, ctx)
		if op == "RunInstances" {
			res = append(res, r.launchResources(region, v)...)
		}
	case "secretsmanager":
		if id := str(v, "SecretId"); id != "" {
			if strings.HasPrefix(id, "arn:") {
				res = append(res, id)
			} else {
				res = append(res, "arn:aws:secretsmanager:"+region+":"+r.Account+":secret:"+id)
			}
		}
	case "ssm":
		if n := str(v, "Name"); n != "" {
			res = append(res, "arn:aws:ssm:"+region+":"+r.Account+":parameter/"+strings.TrimPrefix(n, "/"))
		}
	}
	if len(ctx) == 0 {
		ctx = nil
	}
	return res, ctx
}

// launchResources are the resources IAM authorises a RunInstances on: what it creates
// (instances, their network interfaces, volumes when tagged at launch, the spot instance
// request of a spot launch) and what it uses (image, subnet, security groups, key pair).
func (r *Recorder) launchResources(region string, v reflect.Value) []string {
	ec2ARN := func(account, typ, id string) string {
		return "arn:aws:ec2:" + region + ":" + account + ":" + typ + "/" + id
	}
	res := []string{ec2ARN(r.Account, "instance", "*"), ec2ARN(r.Account, "network-interface", "*")}
	specs := field(v, "TagSpecifications")
	for i := 0; specs.IsValid() && specs.Kind() == reflect.Slice && i < specs.Len(); i++ {
		if rt := field(specs.Index(i), "ResourceType"); rt.IsValid() && rt.String() == "volume" {
			res = append(res, ec2ARN(r.Account, "volume", "*"))
		}
	}
	if mo := field(v, "InstanceMarketOptions"); mo.IsValid() && !(mo.Kind() == reflect.Pointer && mo.IsNil()) {
		res = append(res, ec2ARN(r.Account, "spot-instances-request", "*"))
	}
	if id := str(v, "ImageId"); id != "" {
		res = append(res, ec2ARN("", "image", id)) // public and shared images have no account of ours
	}
	if id := str(v, "SubnetId"); id != "" {
		res = append(res, ec2ARN(r.Account, "subnet", id))
	}
	sgs := field(v, "SecurityGroupIds")
	for i := 0; sgs.IsValid() && sgs.Kind() == reflect.Slice && i < sgs.Len(); i++ {
		res = append(res, ec2ARN(r.Account, "security-group", sgs.Index(i).String()))
	}
	if k := str(v, "KeyName"); k != "" {
		res = append(res, ec2ARN(r.Account, "key-pair", k))
	}
	return res
}

// requestTags collects the tags a request asks for (CreateTags' Tags, RunInstances'
// TagSpecifications) as aws:RequestTag/<key> and aws:TagKeys.
func requestTags(v reflect.Value, ctx map[string][]string) {
	add := func(tagList reflect.Value) {
		for i := 0; tagList.IsValid() && tagList.Kind() == reflect.Slice && i < tagList.Len(); i++ {
			t := tagList.Index(i)
			k, val := str(t, "Key"), str(t, "Value")
			key := "aws:RequestTag/" + k
			if !slices.Contains(ctx[key], val) {
				ctx[key] = append(ctx[key], val)
			}
			if !slices.Contains(ctx["aws:TagKeys"], k) {
				ctx["aws:TagKeys"] = append(ctx["aws:TagKeys"], k)
			}
		}
	}
	add(field(v, "Tags"))
	specs := field(v, "TagSpecifications")
	for i := 0; specs.IsValid() && specs.Kind() == reflect.Slice && i < specs.Len(); i++ {
		add(field(specs.Index(i), "Tags"))
	}
}

func (r *Recorder) arn(prefix, region, name string) string {
	switch prefix {
	case "dynamodb":
		return "arn:aws:dynamodb:" + region + ":" + r.Account + ":table/" + name
	}
	return name
}

// queueARN turns a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>, or an
// emulator's http://host:port/<account>/<name>) into the queue's ARN.
func queueARN(region, queueURL string) string {
	u, err := url.Parse(queueURL)
	if err != nil {
		return queueURL
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 {
		return queueURL
	}
	return "arn:aws:sqs:" + region + ":" + parts[len(parts)-2] + ":" + parts[len(parts)-1]
}

func field(v reflect.Value, name string) reflect.Value {
	v = reflect.Indirect(v)
	if !v.IsValid() || v.Kind() != reflect.Struct {
		return reflect.Value{}
	}
	return v.FieldByName(name)
}

// str reads a string or *string field; "" when absent or nil.
func str(v reflect.Value, name string) string {
	f := field(v, name)
	if !f.IsValid() {
		return ""
	}
	if f.Kind() == reflect.Pointer {
		if f.IsNil() {
			return ""
		}
		f = f.Elem()
	}
	if f.Kind() != reflect.String {
		return ""
	}
	return f.String()
}
