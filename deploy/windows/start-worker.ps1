<#
.SYNOPSIS
Starts a trainfarm worker on a Windows GPU machine.

.DESCRIPTION
One-time setup, from the trainfarm checkout:
    conda env create -f environment.worker.yml
    conda activate trainfarm-worker
    pip install --no-deps -e .
Then, in that environment, with the settings below edited (or set as user environment variables):
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
    # The worker's own log; empty: the console.
    [string]$LogFile = ""
)
$ErrorActionPreference = "Stop"

# Where the farm is. A value already in the environment wins, so secrets can live in user variables:
#   [Environment]::SetEnvironmentVariable("TRAINFARM_S3_SECRET_KEY", "...", "User")
$defaults = @{
    TRAINFARM_REDIS_URL     = "redis://master-host:6379/0"
    TRAINFARM_S3_ENDPOINT   = "http://truenas-host:9000"
    TRAINFARM_S3_ACCESS_KEY = "trainfarm"
    TRAINFARM_S3_SECRET_KEY = "change-me"
    TRAINFARM_S3_BUCKET     = "trainfarm"
    TRAINFARM_ENVIRONMENT   = "production"
}
foreach ($name in $defaults.Keys) {
    if (-not [Environment]::GetEnvironmentVariable($name)) {
        [Environment]::SetEnvironmentVariable($name, $defaults[$name], "Process")
    }
}
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
