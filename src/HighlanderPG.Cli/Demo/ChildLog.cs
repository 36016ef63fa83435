using System.Globalization;
using System.Text;

namespace HighlanderPG.Cli.Demo;

/// <summary>What the demo's child wrote: <c>start</c>, <c>stop</c>, or <c>overlap</c> (it found another child alive).</summary>
internal sealed record ChildEvent(int Index, string Kind, string Node, int Pid, DateTimeOffset At, string? Token);

/// <summary>
/// The shared log of the demo's children, appended to by every child (small <c>O_APPEND</c> writes, so lines never
/// interleave and file order is time order), read here by polling.
/// </summary>
internal sealed class ChildLog(string path)
{
    /// <summary>
    /// The child. It proves that no two of it ever run at once with a kernel lock: <c>flock</c> on the lock file is freed
    /// only when its holder has exited, even by SIGKILL. Its sleeps do not inherit the lock (<c>9&gt;&amp;-</c>).
    /// </summary>
    public const string Script = """
        #!/bin/sh
        # highlander demo child: logs its life; flock proves that no two children ever run at once.
        now() { date +%s%N; }
        exec 9>>"$DEMO_LOCK"
        if ! flock -n 9; then
          echo "overlap $HIGHLANDER_NODE $$ $(now) ${HIGHLANDER_FENCING_TOKEN:--}" >> "$DEMO_LOG"
          flock 9
        fi
        echo "start $HIGHLANDER_NODE $$ $(now) ${HIGHLANDER_FENCING_TOKEN:--}" >> "$DEMO_LOG"
        trap 'echo "stop $HIGHLANDER_NODE $$ $(now) -" >> "$DEMO_LOG"; exit 0' TERM INT
        while :; do sleep 1 9>&- & wait $!; done

        """;

    private readonly Lock _gate = new();
    private readonly List<ChildEvent> _events = [];
    private readonly StringBuilder _partial = new();
    private long _position;

    public string Path { get; } = path;

    public IReadOnlyList<ChildEvent> Events
    {
        get
        {
            lock (_gate)
            {
                return [.. _events];
            }
        }
    }

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

    /// <summary>The child running now, per the log: the last start whose pid has no stop and whose process is alive.</summary>
    public ChildEvent? Running()
    {
        lock (_gate)
        {
            var stopped = _events.Where(e => e.Kind == "stop").Select(e => e.Pid).ToHashSet();
            var last = _events.LastOrDefault(e => e.Kind == "start");
            return last is not null && !stopped.Contains(last.Pid) && Processes.Native.ProcessAlive(last.Pid) ? last : null;
        }
    }

    /// <summary>Reads what was appended since the last call; returns the new events.</summary>
    public IReadOnlyList<ChildEvent> Poll()
    {
        if (!File.Exists(Path))
        {
            return [];
        }

        string text;
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
            text = Encoding.UTF8.GetString(buffer);
        }

        _partial.Append(text);
        var all = _partial.ToString();
        var end = all.LastIndexOf('\n');
        if (end < 0)
        {
            return [];
        }

        _partial.Clear().Append(all[(end + 1)..]);
        var added = new List<ChildEvent>();
        lock (_gate)
        {
            foreach (var line in all[..end].Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = line.Split(' ');
                if (parts.Length >= 4
                    && int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                    && long.TryParse(parts[3], NumberStyles.None, CultureInfo.InvariantCulture, out var nanoseconds))
                {
                    var at = DateTimeOffset.UnixEpoch.AddTicks(nanoseconds / 100);
                    var token = parts.Length >= 5 && parts[4] != "-" ? parts[4] : null;
                    var entry = new ChildEvent(_events.Count, parts[0], parts[1], pid, at, token);
                    _events.Add(entry);
                    added.Add(entry);
                }
            }
        }

        return added;
    }
}
