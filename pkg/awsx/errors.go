package awsx

import (
	"errors"

	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/smithy-go"
)

// Error classes, by API error code. Codes are compared as the service sends them
// (smithy.APIError's ErrorCode), so the legacy SQS codes kumo returns and the codes AWS
// returns today both classify.
var (
	throttleCodes = set(
		"Throttling",
		"ThrottlingException",
		"ThrottledException",
		"RequestLimitExceeded",
		"RequestThrottled",
		"RequestThrottledException",
		"TooManyRequestsException",
		"SlowDown",
		"ProvisionedThroughputExceededException",
		"PriorRequestNotComplete",
		"EC2ThrottledException",
		"BandwidthLimitExceeded",
	)
	capacityCodes = set(
		"InsufficientInstanceCapacity",
		"InsufficientHostCapacity",
		"InsufficientReservedInstanceCapacity",
		"InsufficientCapacity",
		"InstanceLimitExceeded",
		"MaxSpotInstanceCountExceeded",
		// A spot launch whose max price is under the spot price: try another market or type.
		"SpotMaxPriceTooLow",
		"VcpuLimitExceeded",
		// EC2 answers Unsupported when an instance type is not offered in the subnet's AZ.
		"Unsupported",
	)
	notFoundCodes = set(
		"InvalidInstanceID.NotFound",
		"InvalidKeyPair.NotFound",
		"InvalidGroup.NotFound",
		"InvalidSubnetID.NotFound",
		"InvalidAMIID.NotFound",
		"InvalidLaunchTemplateId.NotFound",
		"InvalidLaunchTemplateName.NotFoundException",
		"AWS.SimpleQueueService.NonExistentQueue",
		"QueueDoesNotExist",
		"NoSuchKey",
		"NoSuchBucket",
		"NotFound",
		"NotFoundException",
		"ResourceNotFoundException",
		"ParameterNotFound", // SSM GetParameter: SORTIE_CONFIG=ssm:/... names no parameter
	)
	permanentCodes = set(
		"InvalidParameterValue",
		"InvalidParameter",
		"InvalidParameterCombination",
		"InvalidParameterException",
		"InvalidArgument",
		"InvalidInput",
		"InvalidRequest",
		"InvalidAction",
		"InvalidAttributeName",
		"InvalidAttributeValue",
		"InvalidMessageContents",
		"ValidationError",
		"ValidationException",
		"MissingParameter",
		"MalformedQueryString",
		"UnauthorizedOperation",
		"AccessDenied",
		"AccessDeniedException",
		"AuthFailure",
		"InvalidClientTokenId",
		"InvalidAccessKeyId",
		"UnrecognizedClientException",
		"OptInRequired",
		"IdempotentParameterMismatch",
		"InvalidInstanceID.Malformed",
		"InvalidAMIID.Malformed",
		"InvalidGroupId.Malformed",
		"InvalidSubnetID.Malformed",
		"InvalidUserData.Malformed",
		"InvalidBlockDeviceMapping",
		"MalformedPolicyDocument",
		"MalformedPolicy",
		"InvalidAddress",
		"InvalidAddressID.Malformed",
		"UnsupportedOperation",
	)
)

func set(codes ...string) map[string]bool {
	m := make(map[string]bool, len(codes))
	for _, c := range codes {
		m[c] = true
	}
	return m
}

// ErrorCode returns the API error code anywhere in err's chain ("" when there is none).
func ErrorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

// IsThrottle reports whether AWS throttled the request (or the SDK ran out of retry quota):
// retry later, with backoff.
func IsThrottle(err error) bool {
	if err == nil {
		return false
	}
	var quota ratelimit.QuotaExceededError
	if errors.As(err, &quota) {
		return true
	}
	var quotaPtr *ratelimit.QuotaExceededError
	if errors.As(err, &quotaPtr) {
		return true
	}
	return throttleCodes[ErrorCode(err)]
}

// IsCapacity reports whether EC2 could not provide the capacity asked for (no capacity of
// that type in that AZ, an instance or spot limit, a type not offered in the AZ): fall back
// to another instance type or subnet.
func IsCapacity(err error) bool {
	return err != nil && capacityCodes[ErrorCode(err)]
}

// quotaCodes are the account's limits: waiting (for other instances to end, or for a
// raised quota) helps, another instance type or subnet does not.
var quotaCodes = set("InstanceLimitExceeded", "VcpuLimitExceeded") // a spot limit (MaxSpotInstanceCountExceeded) falls back to on-demand instead

// IsQuota reports whether err is an account limit on running instances or vCPUs: the
// provisioner waits on it instead of falling back to another type.
func IsQuota(err error) bool {
	return err != nil && quotaCodes[ErrorCode(err)]
}

// IsNotFound reports whether the resource named in the request does not exist.
func IsNotFound(err error) bool {
	return err != nil && notFoundCodes[ErrorCode(err)]
}

// IsPermanent reports whether retrying the same request cannot succeed: the request is
// invalid or malformed, or the caller is not allowed to make it. Throttling, capacity and
// server errors are not permanent.
func IsPermanent(err error) bool {
	return err != nil && permanentCodes[ErrorCode(err)]
}
