-- Argo CD health check for flashsale.dev FlashSale objects.
--
-- Install it as resource.customizations.health.flashsale.dev_FlashSale in the
-- argocd-cm ConfigMap (see gitops.md next to this file).
--
-- Argo CD runs custom health scripts without the Lua standard libraries
-- (only base, table and a restricted os), so this script uses no string.*
-- functions: plain comparisons and `..` only.
--
-- What the operator writes in .status:
--   phase               Scheduled | Preparing | Active | CoolingDown |
--                       Restoring | Completed | Suspended
--   observedGeneration  the metadata.generation the status describes
--   conditions          metav1.Condition list with Ready, Reconciling and
--                       Stalled (kstatus conventions) plus one per lever
--
-- Decision order (the first rule that matches wins):
--   1. no status, or status older than the spec      -> Progressing
--   2. Stalled=True (the spec cannot be acted on)     -> Degraded
--   3. phase Suspended                                -> Suspended
--   4. Ready=True                                     -> Healthy
--   5. Ready=False
--        while Preparing/Restoring, or Reconciling=True -> Progressing
--        while Active/CoolingDown (live and not ready)  -> Degraded
--        while Scheduled                                -> Progressing
--   6. phase Completed                                -> Healthy
--   7. anything else (no Ready yet, Ready=Unknown)    -> Progressing

local hs = {}

-- Returns the condition of the given type, or nil.
local function findCondition(conditions, condType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

-- True when the condition exists and its status is the given string.
local function conditionIs(cond, value)
  return cond ~= nil and cond.status == value
end

-- The condition's message, or a fallback when it has none.
local function messageOf(cond, fallback)
  if cond ~= nil and cond.message ~= nil and cond.message ~= "" then
    return cond.message
  end
  return fallback
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

-- 1. The operator has not looked at (the latest version of) this spec yet.
if status == nil or
    (generation ~= nil and
      (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local phase = status.phase
local ready = findCondition(status.conditions, "Ready")
local reconciling = findCondition(status.conditions, "Reconciling")
local stalled = findCondition(status.conditions, "Stalled")

-- 2. Stalled: the operator cannot make progress (e.g. an invalid schedule).
if conditionIs(stalled, "True") then
  hs.status = "Degraded"
  hs.message = messageOf(stalled, "The operator reports the sale as stalled")
  return hs
end

-- 3. spec.suspend is set: everything was put back and nothing else happens.
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = messageOf(ready, "The sale is suspended")
  return hs
end

-- 4. Ready: everything the current phase needs is in place.
if conditionIs(ready, "True") then
  hs.status = "Healthy"
  hs.message = messageOf(ready, "Ready")
  return hs
end

-- 5. Not ready: whether that is expected depends on the phase.
if conditionIs(ready, "False") then
  local msg = messageOf(ready, "Not ready")
  if phase == "Preparing" or phase == "Restoring" or conditionIs(reconciling, "True") then
    -- The operator is still scaling up / putting things back.
    hs.status = "Progressing"
  elseif phase == "Active" or phase == "CoolingDown" then
    -- The sale is live and its capacity is not in place: page someone.
    hs.status = "Degraded"
  elseif phase == "Scheduled" then
    -- Only preflight checks so far; there is still time to fix them.
    hs.status = "Progressing"
  end
  if hs.status ~= nil then
    hs.message = msg
    return hs
  end
end

-- 6. The sale is over and everything is back as it was.
if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = messageOf(ready, "The sale is completed")
  return hs
end

-- 7. No verdict yet (no Ready condition, or Ready=Unknown).
hs.status = "Progressing"
hs.message = messageOf(ready, "Waiting for the operator to report readiness")
return hs
