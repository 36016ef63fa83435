namespace HighlanderPG.Cli;

/// <summary>The exit codes of <c>highlander</c>, documented in docs/cli.md. Scripts depend on them: never renumber.</summary>
internal static class ExitCodes
{
    /// <summary>Success: <c>run</c> stepped down after SIGTERM/SIGINT, <c>status</c> answered, <c>demo</c> held its invariants.</summary>
    public const int Ok = 0;

    /// <summary><c>run</c> crash-looped (more than <c>--max-restarts</c> within <c>--restart-window</c>); <c>demo</c> saw an invariant broken; an unexpected error.</summary>
    public const int Failure = 1;

    /// <summary>Usage or configuration error: unknown option, bad duration, missing command, bad connection string, options that do not fit.</summary>
    public const int Usage = 2;

    /// <summary><c>run --once</c>: another node holds the name (after <c>--wait</c>); the command did not run.</summary>
    public const int HeldElsewhere = 3;

    /// <summary><c>run --once</c> and <c>status</c>: no working database session within <c>--wait</c>; the command did not run.</summary>
    public const int CannotConnect = 4;

    /// <summary><c>run --once</c> and <c>demo</c>: interrupted (SIGTERM/SIGINT, or the lock was lost while the command ran) before the command finished.</summary>
    public const int Interrupted = 5;
}
