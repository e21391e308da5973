-- A child Application is Healthy only when it is synced, its last sync operation succeeded and its own
-- health is Healthy. Since Argo CD 3.4 resources that do not exist yet no longer count against an
-- Application's health, so health alone can read Healthy between two sync waves.
hs = {status = "Progressing", message = "waiting for the first sync"}
if obj.status == nil then
  return hs
end
local operation = obj.status.operationState
if operation ~= nil then
  if operation.phase == "Failed" or operation.phase == "Error" then
    hs.status = "Degraded"
    hs.message = "sync " .. operation.phase .. ": " .. (operation.message or "")
    return hs
  end
  if operation.phase ~= "Succeeded" then
    hs.message = "sync " .. (operation.phase or "pending") .. ": " .. (operation.message or "")
    return hs
  end
end
if obj.status.sync == nil or obj.status.sync.status ~= "Synced" then
  hs.message = "not in sync with Git yet"
  return hs
end
if obj.status.health == nil or obj.status.health.status == nil then
  return hs
end
hs.status = obj.status.health.status
hs.message = obj.status.health.message or ""
return hs
