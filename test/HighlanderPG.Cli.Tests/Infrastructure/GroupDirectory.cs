using System.Diagnostics;
using System.Globalization;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>One line the members of a test group write into their events file.</summary>
/// <param name="Kind"><c>start</c>, <c>stop</c> (it got SIGTERM), <c>ignore</c> (it got SIGTERM and ignores it), <c>exit</c> (it exits by itself, with <see cref="Detail"/> as its code).</param>
/// <param name="Member">The member (<c>HIGHLANDER_MEMBER</c>).</param>
/// <param name="Node">The node it runs under (<c>HIGHLANDER_NODE</c>).</param>
/// <param name="Pid">Its process group: the pid of the process highlander started for it.</param>
/// <param name="Token">Its <c>HIGHLANDER_FENCING_TOKEN</c> (empty without fencing).</param>
/// <param name="Detail">For <c>start</c>: the other members of this group and node it saw running (comma-separated); for <c>exit</c>: the code.</param>
public sealed record GroupEvent(string Kind, string Member, string Node, int Pid, string Token, string Detail)
{
    public override string ToString() => $"{Kind} {Member} {Node} {Pid} token={Token} {Detail}";
}

/// <summary>
/// A temporary directory with a Procfile whose members run <c>member.sh</c>: each member records its start (with the other
/// members of its group it saw running, from <c>/proc</c>), its SIGTERM, and its own exit, in one events file, so that
/// tests assert the order the members themselves saw, not timing. A member exits by itself with code N once a file
/// <c>exit-MEMBER</c> holding N appears (the file is consumed).
/// </summary>
public sealed class GroupDirectory : IDisposable
{
    /// <summary>
    /// The member: journals its start, then waits for SIGTERM (journaled, exit 0; with GROUP_STUBBORN set, journaled as
    /// <c>ignore</c> and ignored) or an <c>exit-MEMBER</c> file (journaled,
    /// exit with the code it holds). The <c>/proc</c> scan lists the processes whose environment has this directory's events
    /// file and this node: the members already running (and their children) when this one starts.
    /// </summary>
    private const string MemberScript = """
        #!/bin/sh
        me="$HIGHLANDER_MEMBER"
        # The member's process group: the pid of the process highlander started (sh -c LINE), whatever forked since.
        set -- $(cat /proc/$$/stat | sed 's/^.*) //')
        group=$3
        seen=
        for f in $(grep -lzx "GROUP_EVENTS=$GROUP_EVENTS" /proc/[0-9]*/environ 2>/dev/null); do
          env=$(tr '\0' '\n' < "$f" 2>/dev/null) || continue
          m=$(printf '%s\n' "$env" | sed -n 's/^HIGHLANDER_MEMBER=//p')
          n=$(printf '%s\n' "$env" | sed -n 's/^HIGHLANDER_NODE=//p')
          if [ -n "$m" ] && [ "$m" != "$me" ] && [ "$n" = "$HIGHLANDER_NODE" ]; then seen="$seen,$m"; fi
        done
        echo "start $me $HIGHLANDER_NODE $group token=$HIGHLANDER_FENCING_TOKEN ${seen#,}" >> "$GROUP_EVENTS"
        if [ -n "$GROUP_STUBBORN" ]; then
          trap 'echo "ignore $me $HIGHLANDER_NODE $group token=$HIGHLANDER_FENCING_TOKEN" >> "$GROUP_EVENTS"' TERM
        else
          trap 'echo "stop $me $HIGHLANDER_NODE $group token=$HIGHLANDER_FENCING_TOKEN" >> "$GROUP_EVENTS"; exit 0' TERM
        fi
        while [ ! -e "$GROUP_DIR/exit-$me" ]; do
          sleep 0.05
        done
        code=$(cat "$GROUP_DIR/exit-$me")
        rm -f "$GROUP_DIR/exit-$me"
        echo "exit $me $HIGHLANDER_NODE $group token=$HIGHLANDER_FENCING_TOKEN $code" >> "$GROUP_EVENTS"
        exit "$code"
        """;

    /// <summary>
    /// Starts a daemon and returns at once: a double fork (the subshell exits at once) and <c>setsid</c> (its own session
    /// and process group), so the daemon leaves its member's process group and outlives its parent. The daemon journals
    /// its start and its SIGTERM as member <c>daemon</c>.
    /// </summary>
    private const string DaemonScript = """
        #!/bin/sh
        ( setsid "$(dirname "$0")/daemon-body.sh" & )
        """;

    private const string DaemonBodyScript = """
        #!/bin/sh
        trap 'echo "stop daemon $HIGHLANDER_NODE $$ token=" >> "$GROUP_EVENTS"; exit 0' TERM
        echo "start daemon $HIGHLANDER_NODE $$ token= of-$HIGHLANDER_MEMBER" >> "$GROUP_EVENTS"
        while :; do
          sleep 0.05
        done
        """;

    public GroupDirectory(params string[] members)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "hl-group-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path);
        var script = System.IO.Path.Combine(Path, "member.sh");
        File.WriteAllText(script, MemberScript.ReplaceLineEndings("\n") + "\n");
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        foreach (var (file, text) in new[] { ("daemon.sh", DaemonScript), ("daemon-body.sh", DaemonBodyScript) })
        {
            var path = System.IO.Path.Combine(Path, file);
            File.WriteAllText(path, text.ReplaceLineEndings("\n") + "\n");
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        File.WriteAllText(Procfile, "# test group\n\n" + string.Concat(members.Select(m => $"{m}: ./member.sh\n")));
        File.WriteAllText(EventsFile, "");
    }

    public string Path { get; }

    public string Procfile => System.IO.Path.Combine(Path, "Procfile");

    public string EventsFile => System.IO.Path.Combine(Path, "events");

    /// <summary>The members' variables, and <c>HIGHLANDER_CONNECTION</c>.</summary>
    public IReadOnlyDictionary<string, string> Environment(string connectionString) => new Dictionary<string, string>
    {
        ["GROUP_EVENTS"] = EventsFile,
        ["GROUP_DIR"] = Path,
        ["HIGHLANDER_CONNECTION"] = connectionString,
    };

    /// <summary>Every line so far, in the order written.</summary>
    public IReadOnlyList<GroupEvent> Events => [.. File.ReadAllLines(EventsFile).Where(l => l.Length > 0).Select(Parse)];

    /// <summary>Makes <paramref name="member"/> exit by itself with <paramref name="code"/>.</summary>
    public void MakeExit(string member, int code)
    {
        var temporary = System.IO.Path.Combine(Path, $".exit-{member}");
        File.WriteAllText(temporary, code.ToString(CultureInfo.InvariantCulture));
        File.Move(temporary, System.IO.Path.Combine(Path, $"exit-{member}"));
    }

    /// <summary>Waits until the events satisfy <paramref name="condition"/> (the members write the file; there is no event to await).</summary>
    public async Task<IReadOnlyList<GroupEvent>> WaitAsync(Func<IReadOnlyList<GroupEvent>, bool> condition, string what, CliProcess? cli = null, TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var events = Events;
            if (condition(events))
            {
                return events;
            }

            if (watch.Elapsed > limit)
            {
                throw new TimeoutException($"{what}: not within {limit}.\n{Describe()}\n{cli?.Output}");
            }

            await Task.Delay(50);
        }
    }

    public string Describe() => "--- events ---\n" + string.Join("\n", Events);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static GroupEvent Parse(string line)
    {
        var parts = line.Split(' ', 6);
        return new GroupEvent(
            parts[0],
            parts[1],
            parts[2],
            int.Parse(parts[3], CultureInfo.InvariantCulture),
            parts[4]["token=".Length..],
            parts.Length > 5 ? parts[5] : "");
    }
}
