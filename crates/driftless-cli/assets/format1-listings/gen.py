import json
T=1_700_000_000_000
def ev(agg, t, name, payload=None, eid=None):
    d={"aggregate_id":agg,"event":name,"occurred_at":T+t,"payload":payload or {}}
    if eid: d["event_id"]=eid
    return json.dumps(d, ensure_ascii=False)
A=[]
districts={"L1":"Mitte","L2":"Mitte","L3":"Kreuzberg","L4":"Neukölln","L5":"Wedding","L6":"Kreuzberg","L7":"Wedding","L8":"Mitte"}
titles={"L1":"Sunny loft","L2":"Quiet 2-room flat","L3":"Canal-side studio","L4":"Garden house","L5":"Attic with a view","L6":"Corner shop","L7":"Family flat","L8":"Tiny room"}
prices={"L1":420000,"L2":310000,"L3":199000,"L4":560000,"L5":275000,"L6":150000,"L7":389000,"L8":99000}
for i,l in enumerate(["L1","L2","L3","L4","L5","L6","L7","L8"]):
    eid = "created-L3" if l=="L3" else None
    A.append(ev(l, 10+i, "ListingCreated", {"title":titles[l],"price":prices[l],"district":districts[l]}, eid))
A.append(ev("L1",100,"ListingPublished"))
A.append(ev("L2",101,"ListingPublished"))
A.append(ev("L3",102,"ListingPublished"))
A.append(ev("L5",103,"ListingPublished"))
A.append(ev("L7",104,"ListingPublished"))
A.append(ev("L1",200,"ListingPriceChanged",{"price":410000}))
A.append(ev("L4",201,"ListingPriceChanged",{"price":540000}))
for j,(l,t) in enumerate([("L1",300),("L1",301),("L1",302),("L2",303),("L2",304),("L5",305),("L7",306)]):
    A.append(ev(l,t,"InquiryReceived",{"inquiry_id":f"q-{j+1}"}))
A.append(ev("L2",400,"ListingArchived"))
A.append(ev("L6",401,"ListingArchived"))
# rejected: inquiry on a draft listing (L4); tried again in file B once L4 is published
A.append(ev("L4",500,"InquiryReceived",{"inquiry_id":"q-early"}))
# rejected and never applied: a price change on an archived listing
A.append(ev("L6",501,"ListingPriceChanged",{"price":120000}))
# duplicate: the same creation again, key order and an ignored field changed
A.append(json.dumps({"payload":{"district":"Mitte","price":420000,"title":"Sunny loft","note":"ignored"},"occurred_at":T+10,"event":"ListingCreated","aggregate_id":"L1","source":"replay"}))
# conflict: the same id with another price
A.append(ev("L1",10,"ListingCreated",{"title":"Sunny loft","price":999999,"district":"Mitte"}))
# an explicit id whose first delivery is rejected (inquiry on a draft) and whose second,
# different payload is applied: this release applies it
A.append(ev("L8",600,"InquiryReceived",{"inquiry_id":"q-shared"},"shared-id"))
A.append(ev("L8",601,"ListingPublished",None,"shared-id"))
A.append("{not json")
A.append(ev("L3",700,"ListingPriceChanged",{"price":189000}))
B=[]
B.append(ev("L4",800,"ListingPublished"))
B.append(ev("L4",500,"InquiryReceived",{"inquiry_id":"q-early"}))  # tried again: now applied
B.append(ev("L9",801,"ListingCreated",{"title":"New build","price":645000,"district":"Neukölln"}))
B.append(ev("L9",802,"ListingPublished"))
B.append(ev("L9",803,"InquiryReceived",{"inquiry_id":"q-9"}))
B.append(ev("L5",804,"InquiryReceived",{"inquiry_id":"q-10"}))
B.append(ev("L1",805,"ListingArchived"))
B.append(ev("L1",806,"InquiryReceived",{"inquiry_id":"q-late"}))  # rejected: archived
B.append(ev("L3",10+2,"ListingCreated",{"title":"Canal-side studio","price":199000,"district":"Kreuzberg"},"created-L3")) # duplicate, explicit id
open("a.jsonl","w").write("\n".join(A)+"\n")
open("b.jsonl","w").write("\n".join(B)+"\n")
