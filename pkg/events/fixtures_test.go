package events

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Valid examples of every event, in canonical (decoded) form: UTC times, nil for empty
// lists and maps. testdata/<Type>.json is each one's wire form.

const (
	testHostKey  = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEEdGT8dWijq9R+oXz/ZONo+ZOvi9i4M7cLjOWdpu+tL sortie-fleet-host"
	otherHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA5EfU179m4Y/k1+KN0+/jjG6fLd6KHjDw33lU4cu1Qb"
	instanceA    = "i-0a1b2c3d4e5f60718"
	instanceB    = "i-0a1b2c3d4e5f60719"
	instanceC    = "i-0a1b2c3d4e5f6071a"
)

var (
	t0 = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	t1 = time.Date(2025, 3, 14, 9, 28, 11, 589793000, time.UTC)
)

func testHeader(at time.Time) Header {
	return NewHeader("job-202-files", "corr-5e1f0a7c", at)
}

func validJobSubmitted() JobSubmitted {
	return JobSubmitted{
		Header:          testHeader(t0),
		Template:        "batch-small",
		Profile:         "image-resize",
		Recipe:          "resize-v2",
		Work:            WorkSource{Count: 202},
		DeadlineSeconds: 600,
		Params:          map[string]string{"QUALITY": "85", "output_dir": "/data/out dir", "FILTER": "*.jpg && echo 'ok' > /dev/null"},
		BestEffort:      true,
	}
}

func validFleetPlanned() FleetPlanned {
	return FleetPlanned{
		Header:           testHeader(t0.Add(2 * time.Second)),
		FleetID:          "job-202-files-r1",
		PlanRevision:     1,
		Template:         "batch-small",
		Profile:          "image-resize",
		Recipe:           "resize-v2",
		Params:           map[string]string{"QUALITY": "85"},
		DeadlineSeconds:  600,
		SubmittedAt:      t0,
		Items:            202,
		InstanceType:     "m3.medium",
		Count:            3,
		EstimatedSeconds: 494.5,
		MeetsDeadline:    true,
		Rationale:        "m3.medium does 10 items/min: ceil(202 / (10 * (600-90)/60)) = 3 instances",
		Nonce:            "q1fTxb0nVZ4Rk3yHc2o8Ww",
		PlannedCost:      0.0276,
	}
}

func validFleetLaunched() FleetLaunched {
	return FleetLaunched{
		Header:       testHeader(t1),
		FleetID:      "job-202-files-r1",
		PlanRevision: 1,
		Template:     "batch-small",
		Recipe:       "resize-v2",
		Params:       map[string]string{"QUALITY": "85"},
		DeadlineAt:   t0.Add(600 * time.Second),
		KeyName:      "sortie-fleet",
		HostKey:      testHostKey,
		Instances: []Instance{
			{ID: instanceA, InstanceType: "c5.large", PrivateIP: "10.0.1.17", SSHEndpoint: "127.0.0.1:40022", LaunchedAt: t1, Market: MarketSpot, HourlyPrice: 0.035},
			{ID: instanceB, InstanceType: "c5.large", PrivateIP: "10.0.1.18", SSHEndpoint: "127.0.0.1:40023", LaunchedAt: t1, Market: MarketOnDemand, HourlyPrice: 0.085},
			{ID: instanceC, InstanceType: "c5.large", SSHEndpoint: "[::1]:40024", LaunchedAt: t1},
		},
		PlannedInstanceType: "m3.medium",
		PlannedCount:        4,
		Fallback:            "m3.medium: InsufficientInstanceCapacity; re-sized for c5.large: 202 items, 20/min per c5.large → 3 instances",
	}
}

func validFleetBootstrapped() FleetBootstrapped {
	return FleetBootstrapped{
		Header:     testHeader(t1.Add(40 * time.Second)),
		FleetID:    "job-202-files-r1",
		Template:   "batch-small",
		Recipe:     "resize-v2",
		Params:     map[string]string{"QUALITY": "85"},
		DeadlineAt: t0.Add(600 * time.Second),
		HostKey:    testHostKey,
		KeyName:    "sortie-fleet",
		Instances: []InstanceResult{
			{ID: instanceA, SSHEndpoint: "127.0.0.1:40022", OK: true, Steps: []StepResult{
				{Name: "upload files", ExitCode: 0, DurationMS: 120},
				{Name: "start workload", ExitCode: 0, DurationMS: 35, OutputTail: []string{"started pid 4242"}},
			}},
			{ID: instanceB, SSHEndpoint: "127.0.0.1:40023", OK: false, Error: "step install tools exited 127", Steps: []StepResult{
				{Name: "install tools", ExitCode: 127, DurationMS: 8, OutputTail: []string{"sh: 1: convert: not found"}},
			}},
		},
	}
}

func validTaskReported() TaskReported {
	return TaskReported{
		Header:     testHeader(t1.Add(90 * time.Second)),
		FleetID:    "job-202-files-r1",
		InstanceID: instanceA,
		TaskID:     "photos/2025/IMG_0042.jpg",
		Outcome:    OutcomeFailed,
		DurationMS: 5312,
		Detail:     "convert: corrupt JPEG data",
	}
}

// validExitReport is a start step's workload exiting 3, as its wrapper reports it.
func validExitReport() TaskReported {
	code := 3
	return TaskReported{
		Header:     testHeader(t1.Add(95 * time.Second)),
		FleetID:    "job-202-files-r1",
		InstanceID: instanceA,
		TaskID:     "worker",
		Outcome:    OutcomeFailed,
		Kind:       ReportExited,
		ExitCode:   &code,
		Detail:     "exit code 3",
	}
}

func validJobFinished() JobFinished {
	return JobFinished{
		Header:          testHeader(t1.Add(300 * time.Second)),
		FleetID:         "job-202-files-r1",
		Template:        "batch-small",
		Outcome:         OutcomeFailed,
		Reason:          "workload on i-0a1b2c3d4e5f60719 exited 1",
		FailingInstance: instanceB,
		LogTail:         []string{"processing IMG_0099.jpg", "convert: out of memory", "exit status 1"},
		Instances: []InstanceRef{
			{ID: instanceA, SSHEndpoint: "127.0.0.1:40022"},
			{ID: instanceB, SSHEndpoint: "127.0.0.1:40023"},
		},
		HostKey:        testHostKey,
		KeyName:        "sortie-fleet",
		Logs:           []string{"logs/resize-85.log"},
		TasksSucceeded: 140,
		TasksFailed:    1,
	}
}

func validFleetTerminated() FleetTerminated {
	return FleetTerminated{
		Header:  testHeader(t1.Add(330 * time.Second)),
		FleetID: "job-202-files-r1",
		Outcome: OutcomeFailed,
		Reason:  "workload on i-0a1b2c3d4e5f60719 exited 1",
		Archives: []Archive{
			{InstanceID: instanceA, Bucket: "sortie-logs", Key: "jobs/job-202-files/i-0a1b2c3d4e5f60718.tar.gz", SizeBytes: 18231},
			{InstanceID: instanceB, Bucket: "sortie-logs", Key: "jobs/job-202-files/i-0a1b2c3d4e5f60719.tar.gz", SizeBytes: 9120},
		},
		TerminatedInstanceIDs: []string{instanceA, instanceB, instanceC},
		InstanceSeconds:       1290.25,
		Cost:                  0.0241,
		PlannedCost:           0.0276,
		ArchiveFailures:       []ArchiveFailure{{InstanceID: instanceC, Error: "archiving logs of i-0a1b2c3d4e5f6071a: dialing ssh: connection refused"}},
		Refused: []RefusedInstance{
			{InstanceID: "i-0f00000000000000d", Reason: RefusedOtherFleet, Detail: "sortie:fleet is job-other-r1"},
			{InstanceID: "i-0f00000000000000e", Reason: RefusedUntagged, Detail: "no sortie:stack tag"},
		},
	}
}

func validInstanceLost() InstanceLost {
	return InstanceLost{
		Header:         testHeader(t1.Add(120 * time.Second)),
		FleetID:        "job-202-files",
		PlanRevision:   1,
		InstanceID:     instanceB,
		Cause:          LostSpotInterruption,
		NoticeDeadline: t1.Add(240 * time.Second),
		Detail:         "EC2 Spot Instance Interruption Warning: instance-action terminate",
		Template:       "batch-small",
		HostKey:        testHostKey,
		KeyName:        "sortie-fleet",
		Logs:           []string{"logs/resize-85.log"},
	}
}

// validEvents returns one valid example of every event type, in Types order.
func validEvents() []Event {
	return []Event{
		validJobSubmitted(), validFleetPlanned(), validFleetLaunched(), validFleetBootstrapped(),
		validTaskReported(), validJobFinished(), validFleetTerminated(), validInstanceLost(),
	}
}

// goldenPath is the wire-format fixture of an event type.
func goldenPath(eventType string) string {
	return filepath.Join("testdata", eventType+".json")
}

func readGolden(t testing.TB, eventType string) []byte {
	t.Helper()
	b, err := os.ReadFile(goldenPath(eventType))
	if err != nil {
		t.Fatalf("reading golden file: %v (run go test ./pkg/events -run TestGolden -update)", err)
	}
	return b
}

// mustJSON marshals v without validation, to build bodies Encode would refuse.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshalling %T: %v", v, err)
	}
	return b
}

// fieldsOfErr returns the fields named by err's field errors.
func fieldsOfErr(err error) []string {
	var out []string
	for _, fe := range FieldErrors(err) {
		out = append(out, fe.Field)
	}
	return out
}

func repeat(s string, n int) string { return strings.Repeat(s, n) }
