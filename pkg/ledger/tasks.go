package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// TaskAPI lists the DynamoDB calls task accounting makes beyond API's.
type TaskAPI interface {
	TransactWriteItems(ctx context.Context, params *dynamodb.TransactWriteItemsInput, optFns ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error)
}

var _ TaskAPI = (*dynamodb.Client)(nil)

// Attributes of a job's task counts and of a task's item.
const (
	AttrTasksPrefix = "tasks_"  // "tasks_succeeded", "tasks_failed": the job's exact counts
	attrTaskSent    = "cw_sent" // on a task's item: its metric reached CloudWatch
)

// TaskCount says what CountTask did with one task report.
type TaskCount int

// Task report outcomes.
const (
	TaskNew       TaskCount = iota // first seen: counted; send its metric, then MarkTaskSent
	TaskUnsent                     // seen and counted before, its metric not sent yet: send it
	TaskDuplicate                  // seen, counted and sent before: nothing to do
)

func taskKey(jobID, taskID, outcome string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: str("task#" + jobID + "#" + outcome + "#" + taskID)}
}

// CountTask counts one report of (job, task, outcome) in the job's record, once however
// often it is delivered: a conditional put of the task's item and the job's counter
// increment in one transaction.
func (l *Ledger) CountTask(ctx context.Context, jobID, taskID, outcome string) (TaskCount, error) {
	now := l.cfg.Now()
	exp := num(now.Add(l.cfg.TTL).Unix())
	item := taskKey(jobID, taskID, outcome)
	item[AttrJobID] = str(jobID)
	item[AttrExpires] = exp
	_, err := l.cfg.API.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Put: &types.Put{
			TableName:                aws.String(l.cfg.Table),
			Item:                     item,
			ConditionExpression:      aws.String("attribute_not_exists(#k)"),
			ExpressionAttributeNames: map[string]string{"#k": AttrKey},
		}},
		{Update: &types.Update{
			TableName:                 aws.String(l.cfg.Table),
			Key:                       Key(jobID),
			UpdateExpression:          aws.String("ADD #c :one SET #job = :job, #exp = :exp"),
			ExpressionAttributeNames:  map[string]string{"#c": AttrTasksPrefix + outcome, "#job": AttrJobID, "#exp": AttrExpires},
			ExpressionAttributeValues: map[string]types.AttributeValue{":one": num(1), ":job": str(jobID), ":exp": exp},
		}},
	}})
	if err == nil {
		return TaskNew, nil
	}
	var tce *types.TransactionCanceledException
	if !errors.As(err, &tce) {
		return 0, fmt.Errorf("counting task %s of job %s: %w", taskID, jobID, err)
	}
	out, gerr := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.cfg.Table), Key: taskKey(jobID, taskID, outcome), ConsistentRead: aws.Bool(true)})
	if gerr != nil {
		return 0, fmt.Errorf("counting task %s of job %s: %w", taskID, jobID, gerr)
	}
	if out.Item == nil {
		return 0, fmt.Errorf("counting task %s of job %s: %w", taskID, jobID, err) // cancelled for another reason
	}
	if _, sent := out.Item[attrTaskSent]; sent {
		return TaskDuplicate, nil
	}
	return TaskUnsent, nil
}

// MarkTaskSent records that a task's metric reached CloudWatch.
func (l *Ledger) MarkTaskSent(ctx context.Context, jobID, taskID, outcome string) error {
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(l.cfg.Table),
		Key:                       taskKey(jobID, taskID, outcome),
		UpdateExpression:          aws.String("SET #s = :t"),
		ExpressionAttributeNames:  map[string]string{"#s": attrTaskSent},
		ExpressionAttributeValues: map[string]types.AttributeValue{":t": num(1)},
	})
	if err != nil {
		return fmt.Errorf("marking task %s of job %s sent: %w", taskID, jobID, err)
	}
	return nil
}

// Tasks returns the job's exact task counts by outcome.
func (r Record) Tasks(outcome string) int {
	n, _ := strconv.Atoi(r.Attrs[AttrTasksPrefix+outcome])
	return n
}
