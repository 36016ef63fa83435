namespace HighlanderPG.TestKit.Scenarios;

/// <summary>
/// One node of some kind (in-process, a separate process, the <c>highlander</c> CLI) running the scenario's singleton, as
/// the scenarios see it. Its child's life is in the scenario's journal.
/// </summary>
public interface IScenarioNode
{
    /// <summary>The node id.</summary>
    string Id { get; }

    /// <summary>Waits until this node follows <paramref name="leader"/> (the only other node of the scenario then).</summary>
    Task WaitFollowingAsync(string leader);

    /// <summary>
    /// Stops the node gracefully (the host's shutdown; SIGTERM for a process) and waits until it has stopped; a process
    /// must exit with 0.
    /// </summary>
    Task StepDownAsync();

    /// <summary>Whether the node logged the event <paramref name="eventId"/> (a <c>HighlanderEventIds</c> constant).</summary>
    bool Logged(int eventId);

    /// <summary>What the node logged, for failure messages.</summary>
    string Describe();
}

/// <summary>A node that runs as an OS process of its own, so that it can be SIGKILLed.</summary>
public interface IProcessScenarioNode : IScenarioNode
{
    /// <summary>SIGKILL: the node (and, by what the node does for it, its child) dies at once.</summary>
    void Kill();
}
