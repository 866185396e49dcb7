<#
.SYNOPSIS
Starts a trainfarm worker on a Windows GPU machine.

.DESCRIPTION
One-time setup, from the trainfarm checkout:
    conda env create -f environment.worker.yml
    conda activate trainfarm-worker
    pip install --no-deps -e .
Secrets (the worker S3 user's secret key, the Redis password) are files in a folder only the
worker's account can read, never environment variables or arguments. Once, as an administrator:
    $dir = "C:\ProgramData\trainfarm\secrets"
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
    icacls $dir /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "<worker account>:(OI)(CI)R"
    Read-Host "worker S3 secret key" -MaskInput | Set-Content -NoNewline "$dir\trainfarm_s3_secret_key"
    Read-Host "Redis password" -MaskInput | Set-Content -NoNewline "$dir\trainfarm_redis_password"
    Read-Host "RabbitMQ password (only with TRAINFARM_BROKER_URL)" -MaskInput | Set-Content -NoNewline "$dir\trainfarm_broker_password"
(SYSTEM and Administrators full control, the worker's account read, nobody else; -MaskInput
needs PowerShell 7.) The script refuses a folder that Everyone, Users or Authenticated Users can
read. Then, in that environment, with the settings below edited (or set as user environment variables):
    .\deploy\windows\start-worker.ps1                    # solo pool: one job at a time
    .\deploy\windows\start-worker.ps1 -Concurrency 2     # threads pool: two jobs side by side (two GPUs)
Windows has no fork, so Celery's prefork pool is not available. Every job runs as a child process of
the worker either way, so a pool thread only waits on it. Ctrl-C stops the worker warmly: running jobs
get Ctrl-Break (the runtime callback checkpoints), their logs are uploaded and they go back to the
queue for another node. A second Ctrl-C stops at once.
#>
param(
    # Jobs run at once; above 1 the threads pool is used. One per GPU the worker hands out.
    [int]$Concurrency = 1,
    [string]$Queues = "gpu",
    [string]$NodeName = $env:COMPUTERNAME,
    # One file per secret setting (trainfarm_s3_secret_key, trainfarm_redis_password).
    [string]$SecretsDir = "C:\ProgramData\trainfarm\secrets",
    # The worker's own log; empty: the console.
    [string]$LogFile = ""
)
$ErrorActionPreference = "Stop"

# Where the farm is (no secrets here). A value already in the environment wins.
$defaults = @{
    TRAINFARM_REDIS_URL          = "rediss://master-host:6380/0"
    TRAINFARM_REDIS_CA_FILE      = "C:\ProgramData\trainfarm\ca.crt"
    TRAINFARM_S3_ENDPOINT        = "https://truenas-host:9000"
    TRAINFARM_S3_ACCESS_KEY      = "trainfarm-worker"
    TRAINFARM_S3_BUCKET          = "trainfarm"
    # What `trainfarm admin signing-key` prints on the master.
    TRAINFARM_SIGNING_PUBLIC_KEY = "change-me"
}
foreach ($name in $defaults.Keys) {
    if (-not [Environment]::GetEnvironmentVariable($name)) {
        [Environment]::SetEnvironmentVariable($name, $defaults[$name], "Process")
    }
}
# Production mode always: the worker refuses a default or empty secret, a password-less or plain
# Redis and plain-HTTP S3 beyond this machine, each with a message naming the setting.
$env:TRAINFARM_ENVIRONMENT = "production"

# Secrets from files only: a secret in the environment would pass to every child process.
foreach ($name in "TRAINFARM_S3_SECRET_KEY", "TRAINFARM_REDIS_PASSWORD", "TRAINFARM_BROKER_PASSWORD") {
    if ([Environment]::GetEnvironmentVariable($name)) {
        throw "$name is set in the environment; put it in $SecretsDir\$($name.ToLower()) instead and remove the variable"
    }
}
if (-not (Test-Path -PathType Container $SecretsDir)) {
    throw "secrets folder $SecretsDir not found (see the notes at the top of this script)"
}
# SIDs, not names, which Windows translates: Everyone, BUILTIN\Users, Authenticated Users.
$openTo = "S-1-1-0", "S-1-5-32-545", "S-1-5-11"
foreach ($item in @(Get-Item $SecretsDir) + @(Get-ChildItem -File $SecretsDir)) {
    foreach ($rule in (Get-Acl $item.FullName).Access) {
        $sid = $rule.IdentityReference.Translate([System.Security.Principal.SecurityIdentifier]).Value
        if ($rule.AccessControlType -eq "Allow" -and $openTo -contains $sid) {
            throw "$($item.FullName) is readable by $($rule.IdentityReference): restrict it with icacls (see the top of this script)"
        }
    }
}
$env:TRAINFARM_SECRETS_DIR = $SecretsDir
$env:TRAINFARM_NODE_NAME = $NodeName
# Optional: the GPUs this worker hands out (default: every GPU NVML sees), and where jobs run and
# datasets are cached (default: under %USERPROFILE%\.trainfarm). Keep these paths short: Windows
# limits paths to 260 characters unless long paths are enabled.
# $env:TRAINFARM_GPUS = "0,1"
# $env:TRAINFARM_WORK_DIR = "D:\trainfarm\work"
# $env:TRAINFARM_CACHE_DIR = "D:\trainfarm\cache"

$pool = if ($Concurrency -gt 1) { @("-P", "threads", "--concurrency", "$Concurrency") } else { @("-P", "solo") }
$logging = @("-l", "info")
if ($LogFile) {
    $logDir = Split-Path -Parent $LogFile
    if ($logDir) { New-Item -ItemType Directory -Force -Path $logDir | Out-Null }
    $logging += @("--logfile", $LogFile)
}
Write-Host "trainfarm worker $NodeName on queue(s) $Queues with $($pool -join ' ')"
celery -A worker worker -Q $Queues @pool -n "$NodeName@%h" @logging
exit $LASTEXITCODE
