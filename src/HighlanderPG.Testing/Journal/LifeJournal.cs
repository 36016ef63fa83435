using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace HighlanderPG.Testing.Journal;

/// <summary>What a line of a <see cref="LifeJournal"/> says happened to a child.</summary>
public enum LifeKind
{
    /// <summary>The child started (<c>start</c>). From the journal's script, written only once it holds the journal's kernel lock.</summary>
    Started,

    /// <summary>The child stopped by itself or when asked (<c>stop</c>).</summary>
    Stopped,

    /// <summary>The child was killed (<c>kill</c>): its life ended without a stop of its own.</summary>
    Killed,

    /// <summary>The child would not stop and its node escalated (<c>escalate</c>); its life has not ended yet.</summary>
    Escalated,

    /// <summary>The child failed (<c>fail</c>): its life ended with an error.</summary>
    Failed,

    /// <summary>The journal's script started while another child of the same singleton still held the kernel lock (<c>overlap</c>): two children were alive at once.</summary>
    Overlap,

    /// <summary>The journal's script started a grandchild (<c>grandchild</c>); <see cref="LifeEvent.Detail"/> is its pid.</summary>
    Grandchild,
}

/// <summary>One line of a <see cref="LifeJournal"/>.</summary>
public sealed class LifeEvent
{
    internal LifeEvent(int seq, LifeKind kind, string node, string singleton, int pid, DateTimeOffset at, string? token, bool fromScript, string? detail)
    {
        Seq = seq;
        Kind = kind;
        Node = node;
        Singleton = singleton;
        Pid = pid;
        At = at;
        Token = token;
        FromScript = fromScript;
        Detail = detail;
    }

    /// <summary>The position of the line in the journal, from 0: the journal's order is the order the lines were appended in.</summary>
    public int Seq { get; }

    /// <summary>What happened.</summary>
    public LifeKind Kind { get; }

    /// <summary>The node the child ran on (<c>HIGHLANDER_NODE</c> for the script).</summary>
    public string Node { get; }

    /// <summary>The singleton the child belongs to (<c>HIGHLANDER_NAME</c> for the script; <c>-</c> when unknown).</summary>
    public string Singleton { get; }

    /// <summary>The process that wrote the line: the script's shell, or the process that called <see cref="LifeJournal.Record"/>.</summary>
    public int Pid { get; }

    /// <summary>When the line was written (the writer's wall clock, 100 ns resolution).</summary>
    public DateTimeOffset At { get; }

    /// <summary>The fencing token the child was given (<c>HIGHLANDER_FENCING_TOKEN</c>), if any.</summary>
    public string? Token { get; }

    /// <summary>Whether the journal's script wrote the line (its starts are witnessed by the kernel lock), rather than <see cref="LifeJournal.Record"/>.</summary>
    public bool FromScript { get; }

    /// <summary>Free text: a grandchild's pid, <c>stubborn</c> on a stubborn script's start, whatever an in-process child recorded.</summary>
    public string? Detail { get; }

    /// <inheritdoc/>
    public override string ToString() =>
        $"#{Seq} {At:HH:mm:ss.fff} {Kind} {Node} {Singleton} pid {Pid}{(Token is null ? "" : " token " + Token)}{(Detail is null ? "" : " " + Detail)}";
}

/// <summary>
/// The one journal of child lives for the demo and the tests: a file that every child appends one line per event to,
/// whether it is a process (the shell <see cref="ChildScript"/>) or runs in-process (<see cref="Record"/>). Every line is
/// written with a single <c>write(2)</c> on an <c>O_APPEND</c> descriptor, so lines from different processes never
/// interleave and the file's order is the order things happened in. The journal reads what was appended
/// (<see cref="Poll"/>, also done by <see cref="WaitAsync"/>), and checks the at-most-once invariant as it reads
/// (<see cref="Violations"/>); it asserts nothing itself.
/// </summary>
/// <remarks>
/// A line is <c>kind node singleton pid unix-nanoseconds token origin [detail]</c>, with <c>-</c> for an absent token,
/// and origin <c>script</c> or <c>record</c>. Nodes and singletons must not contain white space (it is replaced by <c>_</c>).
/// Linux only (the descriptor is opened with <c>open(2)</c>: .NET's <see cref="FileMode.Append"/> does not use <c>O_APPEND</c>).
/// </remarks>
public sealed class LifeJournal
{
    /// <summary>The variable that gives <see cref="ChildScript"/> the journal's path.</summary>
    public const string PathVariable = "LIFE_JOURNAL";

    /// <summary>The variable that gives <see cref="ChildScript"/> its lock file (the default is the journal's path with <c>.lock</c> appended).</summary>
    public const string LockVariable = "LIFE_JOURNAL_LOCK";

    /// <summary>The variable that gives <see cref="ChildScript"/> how long each of its grandchild's naps lasts, in seconds (the default is 1).</summary>
    public const string NapVariable = "LIFE_CHILD_NAP";

    /// <summary>The variable that, set to <c>1</c>, makes <see cref="ChildScript"/> ignore SIGTERM and SIGINT (its grandchildren too): only SIGKILL ends it.</summary>
    public const string StubbornVariable = "LIFE_CHILD_STUBBORN";

    /// <summary>
    /// A child for <c>highlander run</c> (run it with <c>sh</c>) that journals its life and proves with a kernel lock that no
    /// two of it ever run at once: <c>flock</c> on the lock file is freed only when its holder has exited, even by SIGKILL.
    /// If the lock is taken it writes <c>overlap</c>, waits for it, and only then writes <c>start</c>. It then naps in a
    /// grandchild (<c>sleep</c>, which does not inherit the lock: <c>9&gt;&amp;-</c>), journals the first grandchild's pid,
    /// and writes <c>stop</c> on SIGTERM or SIGINT unless stubborn. Parameterised by <see cref="PathVariable"/> (required),
    /// <see cref="LockVariable"/>, <see cref="NapVariable"/> and <see cref="StubbornVariable"/>; it reads
    /// <c>HIGHLANDER_NODE</c>, <c>HIGHLANDER_NAME</c> and <c>HIGHLANDER_FENCING_TOKEN</c> from <c>highlander run</c>.
    /// Needs <c>flock</c> (util-linux) and <c>date +%N</c> (coreutils).
    /// </summary>
    public const string ChildScript = """
        #!/bin/sh
        # A child that journals its life (HighlanderPG.Testing.Journal.LifeJournal); flock proves that no two ever run at once.
        now() { date +%s%N; }
        node=$(printf %s "${HIGHLANDER_NODE:--}" | tr -s ' \t' '__')
        name=$(printf %s "${HIGHLANDER_NAME:--}" | tr -s ' \t' '__')
        line() { echo "$1 $node $name $$ $(now) $2 script $3" >> "$LIFE_JOURNAL"; }
        token="${HIGHLANDER_FENCING_TOKEN:--}"
        exec 9>>"${LIFE_JOURNAL_LOCK:-$LIFE_JOURNAL.lock}"
        if ! flock -n 9; then
          line overlap "$token"
          flock 9
        fi
        if [ "${LIFE_CHILD_STUBBORN:-}" = 1 ]; then
          trap '' TERM INT
          line start "$token" stubborn
        else
          trap 'line stop -; exit 0' TERM INT
          line start "$token"
        fi
        sleep "${LIFE_CHILD_NAP:-1}" 9>&- &
        line grandchild - $!
        wait $!
        while :; do sleep "${LIFE_CHILD_NAP:-1}" 9>&- & wait $!; done

        """;

    private const int OpenWriteOnly = 0x1;
    private const int OpenCreate = 0x40;
    private const int OpenAppend = 0x400;
    private const int OpenCloseOnExec = 0x80000;

    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(20);

    private readonly Lock _gate = new();
    private readonly List<LifeEvent> _events = [];
    private readonly List<string> _violations = [];
    private readonly Dictionary<string, LifeEvent> _running = [];
    private readonly StringBuilder _partial = new();
    private TaskCompletionSource _appended = NewSignal();
    private long _position;

    /// <summary>A journal at <paramref name="path"/> (created by the first line written to it).</summary>
    /// <param name="path">The journal's file.</param>
    public LifeJournal(string path) => Path = System.IO.Path.GetFullPath(path);

    /// <summary>The journal's file.</summary>
    public string Path { get; }

    /// <summary>The lock file that <see cref="ChildScript"/> takes.</summary>
    public string LockPath => Path + ".lock";

    /// <summary>Every line read so far, in the journal's order.</summary>
    public IReadOnlyList<LifeEvent> Events
    {
        get
        {
            lock (_gate)
            {
                return [.. _events];
            }
        }
    }

    /// <summary>How many lines were read so far: pass it as <c>after</c> to <see cref="WaitAsync"/> to wait for what comes next.</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _events.Count;
            }
        }
    }

    /// <summary>
    /// Breaches of at-most-once in what was read so far: every <see cref="LifeKind.Overlap"/> line, and every start of a
    /// singleton while an earlier start of it has not ended (no stop, kill or failure from the same node and process).
    /// Two starts written by <see cref="ChildScript"/> are not a breach by themselves: the second took the kernel lock,
    /// so the first had exited, even if it was killed before it could write its stop.
    /// </summary>
    public IReadOnlyList<string> Violations
    {
        get
        {
            lock (_gate)
            {
                return [.. _violations];
            }
        }
    }

    /// <summary>The environment a <see cref="ChildScript"/> child needs, to add to the command's environment.</summary>
    /// <param name="nap">How long each grandchild's nap lasts (whole seconds; the default is 1 s).</param>
    /// <param name="stubborn">Whether the child ignores SIGTERM and SIGINT.</param>
    /// <returns>The variables and their values.</returns>
    public IReadOnlyDictionary<string, string> ChildEnvironment(TimeSpan? nap = null, bool stubborn = false)
    {
        var environment = new Dictionary<string, string>
        {
            [PathVariable] = Path,
            [LockVariable] = LockPath,
        };
        if (nap is { } length)
        {
            environment[NapVariable] = Math.Max(1, (long)Math.Ceiling(length.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        }

        if (stubborn)
        {
            environment[StubbornVariable] = "1";
        }

        return environment;
    }

    /// <summary>Writes <see cref="ChildScript"/> to <paramref name="path"/>.</summary>
    /// <param name="path">Where to write it; run it with <c>sh</c>.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The task.</returns>
    public static Task WriteChildScriptAsync(string path, CancellationToken cancellationToken = default) =>
        File.WriteAllTextAsync(path, ChildScript, cancellationToken);

    /// <summary>Appends a line for an in-process child (one <c>O_APPEND</c> write), then reads the journal.</summary>
    /// <param name="node">The node the child runs on.</param>
    /// <param name="singleton">The singleton it belongs to.</param>
    /// <param name="kind">What happened.</param>
    /// <param name="detail">Free text (one line).</param>
    /// <param name="token">The fencing token the child was given, if any.</param>
    /// <returns>The event the line became.</returns>
    public LifeEvent Record(string node, string singleton, LifeKind kind, string? detail = null, long? token = null)
    {
        var nanoseconds = (DateTimeOffset.UtcNow - DateTimeOffset.UnixEpoch).Ticks * 100;
        var line = string.Join(' ',
            Word(kind),
            Field(node),
            Field(singleton),
            Environment.ProcessId.ToString(CultureInfo.InvariantCulture),
            nanoseconds.ToString(CultureInfo.InvariantCulture),
            token?.ToString(CultureInfo.InvariantCulture) ?? "-",
            "record");
        if (!string.IsNullOrEmpty(detail))
        {
            line += " " + detail.ReplaceLineEndings(" ");
        }

        Append(line + "\n");
        var pid = Environment.ProcessId;
        Poll();
        lock (_gate)
        {
            // Our own line is in the file, so Poll read it (unless another reader of the same file object raced us; then it is still there).
            for (var i = _events.Count - 1; i >= 0; i--)
            {
                var e = _events[i];
                if (e.Pid == pid && e.Kind == kind && e.Node == Field(node) && e.Singleton == Field(singleton) && !e.FromScript)
                {
                    return e;
                }
            }
        }

        throw new InvalidOperationException($"The line just appended to {Path} was not read back.");
    }

    /// <summary>Reads what was appended since the last read; returns the new events (a line not yet complete waits for the next read).</summary>
    /// <returns>The events read now, in the journal's order.</returns>
    public IReadOnlyList<LifeEvent> Poll()
    {
        TaskCompletionSource? signal = null;
        var added = new List<LifeEvent>();
        lock (_gate)
        {
            if (!File.Exists(Path))
            {
                return [];
            }

            using (var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
            {
                if (stream.Length <= _position)
                {
                    return [];
                }

                stream.Position = _position;
                var buffer = new byte[stream.Length - _position];
                stream.ReadExactly(buffer);
                _position += buffer.Length;
                _partial.Append(Encoding.UTF8.GetString(buffer));
            }

            var all = _partial.ToString();
            var end = all.LastIndexOf('\n');
            if (end < 0)
            {
                return [];
            }

            _partial.Clear().Append(all[(end + 1)..]);
            foreach (var line in all[..end].Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                if (Parse(line, _events.Count) is { } entry)
                {
                    _events.Add(entry);
                    added.Add(entry);
                    Check(entry);
                }
            }

            if (added.Count > 0)
            {
                signal = _appended;
                _appended = NewSignal();
            }
        }

        signal?.TrySetResult();
        return added;
    }

    /// <summary>
    /// Waits for the first event at or after position <paramref name="after"/> that matches, reading the journal as lines are
    /// appended (at once for <see cref="Record"/>; every 20 ms for lines from other processes).
    /// </summary>
    /// <param name="match">What to wait for.</param>
    /// <param name="after">The first position to look at (a <see cref="Count"/> taken earlier).</param>
    /// <param name="timeout">How long to wait (the default is 30 seconds).</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The matching event.</returns>
    /// <exception cref="TimeoutException">No match within <paramref name="timeout"/>; the message lists the journal.</exception>
    public async Task<LifeEvent> WaitAsync(Func<LifeEvent, bool> match, int after = 0, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(match);
        var limit = timeout ?? TimeSpan.FromSeconds(30);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(limit);
        var seen = after;
        while (true)
        {
            Task appended;
            lock (_gate)
            {
                appended = _appended.Task;
                for (var i = Math.Max(seen, 0); i < _events.Count; i++)
                {
                    if (match(_events[i]))
                    {
                        return _events[i];
                    }
                }

                seen = Math.Max(seen, _events.Count);
            }

            try
            {
                // Lines from other processes come with no signal: read again after a short while, or sooner when Record appends.
                await Task.WhenAny(appended, Task.Delay(PollInterval, deadline.Token)).ConfigureAwait(false);
                deadline.Token.ThrowIfCancellationRequested();
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                Poll();
                lock (_gate)
                {
                    for (var i = Math.Max(seen, 0); i < _events.Count; i++)
                    {
                        if (match(_events[i]))
                        {
                            return _events[i];
                        }
                    }
                }

                throw new TimeoutException($"No matching line in {Path} within {limit}. The journal so far:\n{Describe()}");
            }

            Poll();
        }
    }

    /// <summary>The last start of <paramref name="singleton"/> whose life has not ended in the journal (a killed script child may still show here).</summary>
    /// <param name="singleton">The singleton, or null for any.</param>
    /// <returns>The start, or null.</returns>
    public LifeEvent? Current(string? singleton = null)
    {
        lock (_gate)
        {
            return singleton is null
                ? _running.Values.MaxBy(e => e.Seq)
                : _running.GetValueOrDefault(Field(singleton));
        }
    }

    /// <summary>The journal read so far, one event a line, for failure messages.</summary>
    /// <returns>The text.</returns>
    public string Describe()
    {
        lock (_gate)
        {
            return string.Join("\n", _events.Select(e => "  " + e));
        }
    }

    private void Check(LifeEvent entry)
    {
        switch (entry.Kind)
        {
            case LifeKind.Overlap:
                _violations.Add($"a child of {entry.Singleton} started on {entry.Node} (pid {entry.Pid}, line {entry.Seq}) while another one was still alive");
                break;
            case LifeKind.Started:
                if (_running.TryGetValue(entry.Singleton, out var other) && !(other.FromScript && entry.FromScript))
                {
                    _violations.Add($"{entry.Singleton} started on {entry.Node} (pid {entry.Pid}, line {entry.Seq}) while still running on {other.Node} (pid {other.Pid}, line {other.Seq})");
                }

                _running[entry.Singleton] = entry;
                break;
            case LifeKind.Stopped or LifeKind.Killed or LifeKind.Failed:
                if (_running.TryGetValue(entry.Singleton, out var running) && running.Node == entry.Node && running.Pid == entry.Pid)
                {
                    _running.Remove(entry.Singleton);
                }

                break;
        }
    }

    private static LifeEvent? Parse(string line, int seq)
    {
        var parts = line.Split(' ', 8);
        if (parts.Length < 7
            || Kind(parts[0]) is not { } kind
            || !int.TryParse(parts[3], NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
            || !long.TryParse(parts[4], NumberStyles.None, CultureInfo.InvariantCulture, out var nanoseconds))
        {
            return null;
        }

        var detail = parts.Length == 8 && parts[7].Trim().Length > 0 ? parts[7].Trim() : null;
        return new LifeEvent(
            seq,
            kind,
            parts[1],
            parts[2],
            pid,
            DateTimeOffset.UnixEpoch.AddTicks(nanoseconds / 100),
            parts[5] == "-" ? null : parts[5],
            parts[6] == "script",
            detail);
    }

    private static string Word(LifeKind kind) => kind switch
    {
        LifeKind.Started => "start",
        LifeKind.Stopped => "stop",
        LifeKind.Killed => "kill",
        LifeKind.Escalated => "escalate",
        LifeKind.Failed => "fail",
        LifeKind.Overlap => "overlap",
        LifeKind.Grandchild => "grandchild",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    private static LifeKind? Kind(string word) => word switch
    {
        "start" => LifeKind.Started,
        "stop" => LifeKind.Stopped,
        "kill" => LifeKind.Killed,
        "escalate" => LifeKind.Escalated,
        "fail" => LifeKind.Failed,
        "overlap" => LifeKind.Overlap,
        "grandchild" => LifeKind.Grandchild,
        _ => null,
    };

    private static string Field(string value) =>
        string.IsNullOrEmpty(value) ? "-" : string.Concat(value.Select(c => char.IsWhiteSpace(c) ? '_' : c));

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private void Append(string line)
    {
        var bytes = Encoding.UTF8.GetBytes(line);
        var descriptor = NativeMethods.Open(Path, OpenWriteOnly | OpenCreate | OpenAppend | OpenCloseOnExec, Convert.ToInt32("644", 8));
        if (descriptor < 0)
        {
            throw new IOException($"Cannot open {Path} to append to it (errno {Marshal.GetLastPInvokeError()}).");
        }

        try
        {
            var written = NativeMethods.Write(descriptor, bytes, bytes.Length);
            if (written != bytes.Length)
            {
                throw new IOException($"Cannot append to {Path} (wrote {written} of {bytes.Length} bytes, errno {Marshal.GetLastPInvokeError()}).");
            }
        }
        finally
        {
            _ = NativeMethods.Close(descriptor);
        }
    }

    private static class NativeMethods
    {
        [DllImport("libc", EntryPoint = "open", SetLastError = true, CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
        public static extern int Open(string path, int flags, int mode);

        [DllImport("libc", EntryPoint = "write", SetLastError = true)]
        public static extern nint Write(int descriptor, byte[] buffer, nint count);

        [DllImport("libc", EntryPoint = "close", SetLastError = true)]
        public static extern int Close(int descriptor);
    }
}
