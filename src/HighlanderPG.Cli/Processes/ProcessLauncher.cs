using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;

namespace HighlanderPG.Cli.Processes;

/// <summary>What to start: a program, its arguments and environment changes.</summary>
internal sealed record LaunchSpec(string FileName, IReadOnlyList<string> Arguments)
{
    /// <summary>Variables to set (a <see langword="null"/> value removes the variable).</summary>
    public IReadOnlyDictionary<string, string?> Environment { get; init; } = new Dictionary<string, string?>();

    /// <summary>Capture standard output and error (the demo's nodes); otherwise all three streams are inherited.</summary>
    public bool RedirectOutput { get; init; }

    /// <summary>The directory it starts in (<see langword="null"/>: this process's).</summary>
    public string? WorkingDirectory { get; init; }
}

/// <summary>
/// Starts the processes that must not outlive <c>highlander</c>: a run's command, the demo's nodes.
/// </summary>
/// <remarks>
/// <para>
/// Each process is started as <c>setpriv --pdeathsig KILL -- setsid -- PROGRAM ARGS</c> (util-linux): it gets its own
/// session and process group (its pid is its group id), so stopping it can signal everything it started, and the
/// kernel sends it SIGKILL if <c>highlander</c> dies, even by SIGKILL. <c>setpriv</c> and <c>setsid</c> exec in place:
/// the pid seen here is the program's own.
/// </para>
/// <para>
/// The parent-death signal is tied to the <em>thread</em> that forked, not the process (prctl(2), PR_SET_PDEATHSIG): a
/// thread-pool thread that retires would kill the child. So every process is forked from one dedicated thread that
/// lives as long as the process.
/// </para>
/// <para>
/// The parent-death signal reaches only the program itself, not what it started (a shell script's own children). So a
/// watchdog, a tiny <c>sh</c> in its own session, holds a pipe from this process and the list of live process groups;
/// when this process dies its end of the pipe closes, and the watchdog SIGKILLs every group still listed.
/// </para>
/// </remarks>
internal sealed class ProcessLauncher
{
    /// <summary>
    /// The watchdog: reads "+PGID:STARTTIME" and "-PGID" lines; at end of input, SIGKILLs each group still listed, unless
    /// its id now belongs to another process (pids are reused: the leader's start time, field 22 of /proc/PID/stat, must
    /// match). A leader that is gone with members left is still ours: a group id is not reused while it has members.
    /// </summary>
    internal const string WatchdogScript = """
        exec >/dev/null 2>&1
        trap '' INT TERM HUP QUIT
        groups=
        while IFS= read -r line; do
          case $line in
            +*) groups="$groups ${line#+}" ;;
            -*) keep=; for g in $groups; do [ "${g%%:*}" = "${line#-}" ] || keep="$keep $g"; done; groups=$keep ;;
          esac
        done
        for g in $groups; do
          pgid=${g%%:*}; start=${g#*:}
          if [ -r "/proc/$pgid/stat" ]; then
            s=$(cat "/proc/$pgid/stat") || continue
            s=${s##*) }
            set -- $s
            [ "${20}" = "$start" ] || continue
          fi
          kill -KILL -"$pgid"
        done
        """;

    private static readonly Lazy<ProcessLauncher> SharedInstance = new(() => new ProcessLauncher(), LazyThreadSafetyMode.ExecutionAndPublication);
    private readonly BlockingCollection<Action> _work = [];
    private readonly ConcurrentDictionary<int, bool> _started = new();
    private readonly Lock _watchdogGate = new();
    private StreamWriter? _watchdog;
    private bool _watchdogBroken;

    private ProcessLauncher()
    {
        var thread = new Thread(() =>
        {
            foreach (var item in _work.GetConsumingEnumerable())
            {
                item();
            }
        })
        {
            IsBackground = true,
            Name = "highlander process launcher",
        };
        thread.Start();
    }

    /// <summary>The process's launcher: one thread, one watchdog.</summary>
    public static ProcessLauncher Shared => SharedInstance.Value;

    /// <summary>Says what is missing to start processes safely, or <see langword="null"/> when all is there.</summary>
    public static string? MissingPrerequisite()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "highlander runs commands on Linux only (it needs process groups and a parent-death signal)";
        }

        foreach (var program in new[] { "setpriv", "setsid", "sh" })
        {
            if (FindProgram(program) is null)
            {
                return $"'{program}' was not found on PATH; it comes with util-linux (Debian/Ubuntu: apt-get install util-linux), which highlander needs to give the command its own process group and a parent-death signal";
            }
        }

        return null;
    }

    /// <summary>
    /// Finds <paramref name="name"/> like <c>execvp</c> would: a name with a slash as a path, otherwise on <c>PATH</c>.
    /// Returns the executable's path, or <see langword="null"/>.
    /// </summary>
    public static string? FindProgram(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0)
        {
            return null;
        }

        if (name.Contains('/', StringComparison.Ordinal))
        {
            return IsExecutable(name) ? name : null;
        }

        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (var directory in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(directory, name);
            if (IsExecutable(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Starts <paramref name="spec"/> in its own session and process group, with a parent-death signal, watched by the watchdog.</summary>
    public Task<Process> StartAsync(LaunchSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var done = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                EnsureWatchdog();
                var process = Start(spec);
                _started[process.Id] = true;
                Watch(process.Id);
                done.SetResult(process);
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        });
        return done.Task;
    }

    /// <summary>
    /// Starts the watchdog now (it is started with the first process otherwise), so that the first launch of a command
    /// does not pay for it: that launch is on the path from acquiring a lock to the command running.
    /// </summary>
    public Task WarmUpAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                EnsureWatchdog();
                done.SetResult();
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        });
        return done.Task;
    }

    /// <summary>
    /// Whether <paramref name="pid"/> is a process this launcher started (a command, a member, a demo node, the watchdog),
    /// as opposed to a descendant that was re-parented to this process because it is a child subreaper.
    /// </summary>
    public bool Started(int pid) => _started.ContainsKey(pid);

    /// <summary>Tells the watchdog that group <paramref name="processGroup"/> is done with (so a reused id is never killed).</summary>
    public void Forget(int processGroup) => TellWatchdog("-" + processGroup.ToString(CultureInfo.InvariantCulture));

    private void Watch(int processGroup)
    {
        // No start time: the process has already exited (and been reaped); whatever it left is stopped by its owner.
        if (Native.StartTime(processGroup) is { } startTime)
        {
            TellWatchdog("+" + processGroup.ToString(CultureInfo.InvariantCulture) + ":" + startTime.ToString(CultureInfo.InvariantCulture));
        }
    }

    private static Process Start(LaunchSpec spec)
    {
        var startInfo = new ProcessStartInfo(FindProgram("setpriv") ?? "setpriv")
        {
            UseShellExecute = false,
            RedirectStandardOutput = spec.RedirectOutput,
            RedirectStandardError = spec.RedirectOutput,
            WorkingDirectory = spec.WorkingDirectory ?? "",
        };
        foreach (var argument in (string[])["--pdeathsig", "KILL", "--", FindProgram("setsid") ?? "setsid", "--", spec.FileName, .. spec.Arguments])
        {
            startInfo.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in spec.Environment)
        {
            if (value is null)
            {
                startInfo.Environment.Remove(name);
            }
            else
            {
                startInfo.Environment[name] = value;
            }
        }

        return Process.Start(startInfo) ?? throw new InvalidOperationException($"Could not start {spec.FileName}.");
    }

    private void EnsureWatchdog()
    {
        lock (_watchdogGate)
        {
            if (_watchdog is not null || _watchdogBroken)
            {
                return;
            }

            var startInfo = new ProcessStartInfo(FindProgram("setsid") ?? "setsid")
            {
                UseShellExecute = false,
                RedirectStandardInput = true,
            };
            foreach (var argument in (string[])["--", FindProgram("sh") ?? "/bin/sh", "-c", WatchdogScript])
            {
                startInfo.ArgumentList.Add(argument);
            }

            var process = Process.Start(startInfo) ?? throw new InvalidOperationException("Could not start the watchdog shell.");
            _started[process.Id] = true;
            _watchdog = process.StandardInput;
            _watchdog.AutoFlush = true;
        }
    }

    private void TellWatchdog(string line)
    {
        lock (_watchdogGate)
        {
            if (_watchdog is null)
            {
                return;
            }

            try
            {
                _watchdog.Write(line + "\n");
            }
            catch (IOException)
            {
                // Someone killed the watchdog: commands still get the parent-death signal, their children no longer do.
                _watchdogBroken = true;
                _watchdog = null;
                Console.Error.WriteLine("highlander: warning: the watchdog process is gone; if highlander is killed, processes started by the command may survive it");
            }
        }
    }

    private static bool IsExecutable(string path)
    {
        try
        {
            return File.Exists(path)
                && (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
