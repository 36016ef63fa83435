namespace HighlanderPG;

/// <summary>Which node of the cluster takes a free singleton (<see cref="HighlanderOptions.Placement"/>).</summary>
public enum SingletonPlacement
{
    /// <summary>Whichever node tries first takes it: the first node to connect usually leads every singleton.</summary>
    FirstComer = 0,

    /// <summary>
    /// The singletons are spread over the live nodes of the namespace that use this placement: each leads at most its share
    /// (its number of singletons divided by the number of live nodes, rounded up); a node above its share hands the surplus
    /// over gracefully; <see cref="ClusterSingletonOptions.PreferredNodes"/> are honoured while such a node is alive. See
    /// docs/lease-protocol.md, "Placement".
    /// </summary>
    Spread = 1,
}
